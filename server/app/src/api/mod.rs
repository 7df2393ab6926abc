//! The API: GraphQL (queries, mutations, subscriptions over WebSocket), the agent protocol over
//! HTTP, the end user's postpone page, the console, backups and the HTTP server itself.
//!
//! Architecture invariant: the API depends on the services, never the reverse. It checks who
//! calls and what they send, and turns service answers and errors into HTTP and GraphQL ones.

pub mod agent;
pub mod backup;
pub mod console;
pub mod files;
pub mod graphiql;
pub mod graphql;
pub mod http;
pub mod metrics;
pub mod postpone;
pub mod records;
pub mod reports;
