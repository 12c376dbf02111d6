//! The bottom layer: vocabularies every other layer shares (labels and the
//! series cap, time, the kernel's names for numbers, errno names, spans,
//! what the binary was built from, which programs use which maps, what a
//! cgroup path says about its workload).
//! Nothing here imports anything above it (see tests/repo/layers.rs).

pub mod bounded;
pub mod build_info;
pub mod clock;
pub mod errno;
pub mod kernel;
pub mod labels;
pub mod redact;
pub mod refs;
pub mod series;
pub mod spans;
#[cfg(test)]
pub(crate) mod testing;
pub mod workload;
