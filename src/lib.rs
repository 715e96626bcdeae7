//! abc-operator: runs pyABC's Redis-based ABC-SMC sampling on Kubernetes or locally.
//!
//! Layers point one way: [`api`] and [`protocol`] know nothing of the controller or the local
//! runner; [`resources`] builds objects without a client; only [`controller`] and [`local`] act
//! on runs. [`results_copy`] is the pure part of `kubectl abc results` (the plugin acts).

pub mod allocator;
pub mod api;
pub mod autoscaling;
pub mod controller;
pub mod dashboard;
pub mod local;
pub mod logging;
pub mod metrics;
pub mod protocol;
pub mod resources;
pub mod results_copy;
