//! Shared test support: a real control plane, a real redis-server, the pinned Python, a real
//! browser.
//! Each test binary includes this with `mod support;` and uses what it needs.
#![allow(dead_code)]

pub mod aggregation;
pub mod browser;
pub mod cluster;
pub mod controller;
pub mod hostile_redis;
pub mod kubelet;
pub mod promtool;
pub mod python;
pub mod redis;
pub mod results_db;
pub mod run;
