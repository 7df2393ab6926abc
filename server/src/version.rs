//! Version ordering: "latest" compares numerically field by field (`1.10.0` > `1.9.2`).

use std::cmp::Ordering;

/// Compares two version strings field by field. Fields are split on `.`, `-`, `+` and `_`;
/// numeric fields compare as numbers, others as text, a number sorts before text, and a missing
/// field counts as 0 (`1.2` == `1.2.0`). Total and consistent with equality of the parts.
pub fn compare(a: &str, b: &str) -> Ordering {
    // Without allocating: planning compares versions for every item of every computer.
    let mut pa = fields(a);
    let mut pb = fields(b);
    loop {
        let (x, y) = match (pa.next(), pb.next()) {
            (None, None) => return Ordering::Equal,
            (x, y) => (x.unwrap_or(Part::Num(0)), y.unwrap_or(Part::Num(0))),
        };
        let o = match (x, y) {
            (Part::Num(p), Part::Num(q)) => p.cmp(&q),
            (Part::Num(_), Part::Text(_)) => Ordering::Less,
            (Part::Text(_), Part::Num(_)) => Ordering::Greater,
            (Part::Text(p), Part::Text(q)) => p
                .bytes()
                .map(|c| c.to_ascii_lowercase())
                .cmp(q.bytes().map(|c| c.to_ascii_lowercase())),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Part<'a> {
    Num(u128),
    /// Compared ASCII-case-insensitively.
    Text(&'a str),
}

fn fields(v: &str) -> impl Iterator<Item = Part<'_>> {
    v.trim()
        .trim_start_matches(['v', 'V'])
        .split(['.', '-', '+', '_'])
        .map(|p| match p.parse::<u128>() {
            Ok(n) => Part::Num(n),
            Err(_) => Part::Text(p),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn numeric_fields() {
        assert_eq!(compare("1.10.0", "1.9.2"), Ordering::Greater);
        assert_eq!(compare("1.2", "1.2.0"), Ordering::Equal);
        assert_eq!(compare("2.0", "10.0"), Ordering::Less);
        assert_eq!(compare("v1.0", "1.0"), Ordering::Equal);
    }

    proptest! {
        #[test]
        fn antisymmetric(a in "[0-9a-c.]{0,8}", b in "[0-9a-c.]{0,8}") {
            prop_assert_eq!(compare(&a, &b), compare(&b, &a).reverse());
        }
        #[test]
        fn transitive(a in "[0-9.]{1,6}", b in "[0-9.]{1,6}", c in "[0-9.]{1,6}") {
            if compare(&a, &b).is_le() && compare(&b, &c).is_le() {
                prop_assert!(compare(&a, &c).is_le());
            }
        }
        #[test]
        fn numeric_order_matches_tuples(x in (0u32..50, 0u32..50, 0u32..50), y in (0u32..50, 0u32..50, 0u32..50)) {
            let a = format!("{}.{}.{}", x.0, x.1, x.2);
            let b = format!("{}.{}.{}", y.0, y.1, y.2);
            prop_assert_eq!(compare(&a, &b), x.cmp(&y));
        }
    }
}
