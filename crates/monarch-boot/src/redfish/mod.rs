//! The Redfish management service of a supervised chassis: its users and its TLS identity.
pub mod tls;
pub mod users;
