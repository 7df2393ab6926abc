//! End-to-end tests: the real server over HTTP and WebSocket, real agents running real shell
//! scripts, a real SMTP listener. One module per capability; one test binary (one link).

mod agents;
mod cluster_agents;
mod cluster_moves;
mod cluster_once;
mod cluster_sessions;
mod console;
mod control;
mod crash;
mod field_mail;
mod field_offline;
mod field_output;
mod foundation;
mod graphql_http;
mod hostile;
mod installers;
mod integrations;
mod integrators;
mod inventory;
mod library;
mod lists;
mod mail;
mod ops;
mod postgres;
mod readme;
mod reboots;
mod records;
mod schedules;
mod security;
mod security_net;
mod security_people;
mod security_small;
mod sessions;
mod supply;
mod task_parameters;
mod windows_agent;
