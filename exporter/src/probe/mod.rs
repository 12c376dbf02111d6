//! Probes: each attaches its BPF programs (with fallbacks where the kernel
//! offers several hooks), decodes the records it owns and feeds its
//! aggregator. The list of probes is explicit code in [`build`].

pub mod connect;
pub mod map;
pub mod retransmit;

use aya::{
    Ebpf,
    programs::{ProgramError, TracePoint},
};
use prometheus_client::registry::Registry;

use crate::{aggregate::map::Clock, config::Settings, decode::DecodeError, telemetry::Telemetry};

/// How a probe ended up attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    Tracepoint,
    TpBtf,
    Fentry,
    Kprobe,
}

impl AttachMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tracepoint => "tracepoint",
            Self::TpBtf => "tp_btf",
            Self::Fentry => "fentry",
            Self::Kprobe => "kprobe",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("program {0} is missing from the embedded BPF object")]
    MissingProgram(&'static str),
    #[error("program {program}: {source}")]
    Program {
        program: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("attaching {program} to tp_btf/{name}: {source}")]
    TpBtf {
        program: &'static str,
        name: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("reading the kernel's BTF: {0}")]
    Btf(#[from] aya::BtfError),
    #[error("attaching {program} to tracepoint {category}:{name}: {source}")]
    Tracepoint {
        program: &'static str,
        category: &'static str,
        name: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
}

/// An error with its causes, each appended unless the message already says it
/// (aya's file errors name the file but keep the errno in their source).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

pub trait Probe: Send {
    /// The name `--probes` knows it by.
    fn name(&self) -> &'static str;
    /// Index into the kernel's per-CPU lost-record array.
    fn id(&self) -> u32;
    /// Record kinds this probe decodes.
    fn kinds(&self) -> &'static [u16];
    /// Every program this probe may attach (whichever its chain picked),
    /// for the kernel's per-program miss counters.
    fn programs(&self) -> &'static [&'static str];
    /// Loads and attaches the probe's programs, trying the cheapest hook the
    /// kernel allows first.
    fn attach(&mut self, bpf: &mut Ebpf) -> Result<AttachMode, ProbeError>;
    /// Decodes one record of one of [`Probe::kinds`] and aggregates it.
    fn handle(&mut self, kind: u16, bytes: &[u8]) -> Result<(), DecodeError>;
}

/// Every enabled probe, in the order of `settings.probes`.
pub fn build(
    settings: &Settings,
    registry: &mut Registry,
    telemetry: &Telemetry,
) -> Vec<Box<dyn Probe>> {
    build_with_clock(settings, registry, telemetry, Clock::now())
}

/// [`build`] with the clock that turns kernel timestamps into Unix time.
pub fn build_with_clock(
    settings: &Settings,
    registry: &mut Registry,
    telemetry: &Telemetry,
    clock: Clock,
) -> Vec<Box<dyn Probe>> {
    settings
        .probes
        .iter()
        .filter_map(|name| -> Option<Box<dyn Probe>> {
            match *name {
                "connect" => Some(Box::new(connect::ConnectProbe::new(
                    registry, settings, telemetry, clock,
                ))),
                "map" => Some(Box::new(map::MapProbe::new(
                    registry, settings, telemetry, clock,
                ))),
                "retransmit" => Some(Box::new(retransmit::RetransmitProbe::new(
                    registry, settings, telemetry,
                ))),
                _ => None,
            }
        })
        .collect()
}

/// Loads program `program` as a BTF-enabled raw tracepoint (tp_btf) on
/// `name` and attaches it.
pub fn attach_tp_btf(
    bpf: &mut Ebpf,
    program: &'static str,
    name: &'static str,
) -> Result<(), ProbeError> {
    let btf = aya::Btf::from_sys_fs()?;
    let prog: &mut aya::programs::BtfTracePoint = bpf
        .program_mut(program)
        .ok_or(ProbeError::MissingProgram(program))?
        .try_into()
        .map_err(|e| ProbeError::Program {
            program,
            source: Box::new(e),
        })?;
    let wrap = |e| ProbeError::TpBtf {
        program,
        name,
        source: Box::new(e),
    };
    prog.load(name, &btf).map_err(wrap)?;
    if let Err(e) = prog.attach() {
        let _ = prog.unload();
        return Err(wrap(e));
    }
    Ok(())
}

/// Unloads (and so detaches) the tracepoint programs named, where loaded:
/// what a fallback does with the half of a pair that attached before the
/// other failed.
pub fn detach(bpf: &mut Ebpf, programs: &[&'static str]) {
    for name in programs {
        let prog: Option<&mut TracePoint> = bpf.program_mut(name).and_then(|p| p.try_into().ok());
        if let Some(p) = prog {
            let _ = p.unload();
        }
    }
}

/// Loads program `program` as a tracepoint program and attaches it to
/// `category:name`.
pub fn attach_tracepoint(
    bpf: &mut Ebpf,
    program: &'static str,
    category: &'static str,
    name: &'static str,
) -> Result<(), ProbeError> {
    let prog: &mut TracePoint = bpf
        .program_mut(program)
        .ok_or(ProbeError::MissingProgram(program))?
        .try_into()
        .map_err(|source| ProbeError::Program {
            program,
            source: Box::new(source),
        })?;
    prog.load().map_err(|source| ProbeError::Program {
        program,
        source: Box::new(source),
    })?;
    prog.attach(category, name)
        .map_err(|source| ProbeError::Tracepoint {
            program,
            category,
            name,
            source: Box::new(source),
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner")]
    struct Inner(#[source] std::io::Error);

    #[test]
    fn chains_causes_without_repeating_them() {
        let e = Outer(Inner(std::io::Error::from_raw_os_error(libc::ENOENT)));
        let text = error_chain(&e);
        assert!(
            text.starts_with("outer: inner: No such file or directory"),
            "{text}"
        );
        assert_eq!(text.matches("inner").count(), 1);
    }
}
