//! The API's own scalars.

use async_graphql::{InputValueError, InputValueResult, Scalar, ScalarType, Value};
use upkeep_core::domain::Time;

/// An instant (`DateTime`): [`crate::time::rfc3339`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DateTime(pub Time);

/// An instant, written in RFC 3339 in UTC with milliseconds and `Z`
/// (`2026-11-30T12:00:00.000Z`). Input may carry any offset; it is converted to UTC.
#[Scalar(
    name = "DateTime",
    specified_by_url = "https://datatracker.ietf.org/doc/html/rfc3339"
)]
impl ScalarType for DateTime {
    fn parse(value: Value) -> InputValueResult<Self> {
        match &value {
            Value::String(s) => crate::time::parse_rfc3339(s)
                .map(DateTime)
                .map_err(InputValueError::custom),
            _ => Err(InputValueError::custom(
                "expected an RFC 3339 date-time string such as 2026-11-30T12:00:00.000Z",
            )),
        }
    }

    fn to_value(&self) -> Value {
        Value::String(crate::time::rfc3339(self.0))
    }
}

impl From<Time> for DateTime {
    fn from(t: Time) -> DateTime {
        DateTime(t)
    }
}

impl From<DateTime> for Time {
    fn from(t: DateTime) -> Time {
        t.0
    }
}
