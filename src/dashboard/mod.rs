//! Each run's page: its inference and execution at a glance.
//!
//! [`page`] renders it (pure: from the run's status and generation records to HTML and CSV),
//! [`server`] serves it from the operator through the Kubernetes API server, [`proxy`] is the
//! loopback end of `kubectl abc dashboard`. The charts are inline SVG from [`svg`]'s small
//! kit, drawn by [`plots`]; [`gzip`] keeps a rendered page compressed.

pub mod export;
pub mod gzip;
pub mod page;
pub mod plots;
pub mod proxy;
pub mod server;
pub mod svg;
