//! The scenarios, one file each; each has `run(&Bench, &mut Report)`.

pub mod bulk;
pub mod connect;
pub mod fanout;
pub mod flaky;
pub mod fleet;
pub mod footprint;
pub mod rate;
pub mod rate_h2;
mod rate_history;
mod rate_run;
pub mod soak;
pub mod swarm;
pub mod udp;
