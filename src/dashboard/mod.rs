//! Each run's page: its inference and execution at a glance.

pub mod page;
pub mod proxy;
pub mod server;
