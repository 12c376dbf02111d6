//! Attach chains as data: a probe lists [`Link`]s, cheapest first, each a
//! set of hooks that must all attach for the link to hold. The first link
//! that the kernel (and `attach.disable`) allows wins; a link that fails
//! half way is undone whole before the next is tried, so a probe is never
//! attached through two modes at once.
//!
//! Each failure is recognised by what it is and logged with why: a kernel
//! that refuses trampolines fails fentry loads with EPERM and an empty
//! verifier log; a kernel without kprobes has no kprobe PMU
//! (/sys/bus/event_source/devices/kprobe/type); tp_btf loads fail where the
//! tracepoint's arguments differ from what the program expects.

use aya::{
    Btf, Ebpf,
    programs::{
        BtfTracePoint, FEntry, FExit, KProbe, Program, ProgramError, TracePoint,
        kprobe::KProbeError,
    },
};

/// How a probe ended up attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    Tracepoint,
    TpBtf,
    Fentry,
    Kprobe,
}

impl AttachMode {
    /// The modes `attach.disable` can turn off: every one but the classic
    /// tracepoint, which every chain ends with.
    pub const DISABLEABLE: &'static [AttachMode] = &[Self::TpBtf, Self::Fentry, Self::Kprobe];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tracepoint => "tracepoint",
            Self::TpBtf => "tp_btf",
            Self::Fentry => "fentry",
            Self::Kprobe => "kprobe",
        }
    }

    pub fn can_disable(self) -> bool {
        Self::DISABLEABLE.contains(&self)
    }

    /// The disableable mode named `name`.
    pub fn parse_disableable(name: &str) -> Option<Self> {
        Self::DISABLEABLE
            .iter()
            .copied()
            .find(|m| m.as_str() == name)
    }
}

/// One program on one kernel hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// A classic tracepoint, `category:name`.
    Tracepoint {
        program: &'static str,
        category: &'static str,
        name: &'static str,
    },
    /// A BTF-enabled raw tracepoint (5.5+).
    TpBtf {
        program: &'static str,
        event: &'static str,
    },
    /// fentry on a kernel function (BPF trampolines, 5.5+).
    Fentry {
        program: &'static str,
        function: &'static str,
    },
    /// fexit on a kernel function.
    Fexit {
        program: &'static str,
        function: &'static str,
    },
    /// A kprobe or kretprobe (the program's section says which).
    Kprobe {
        program: &'static str,
        function: &'static str,
    },
}

impl Hook {
    pub fn program(&self) -> &'static str {
        match *self {
            Self::Tracepoint { program, .. }
            | Self::TpBtf { program, .. }
            | Self::Fentry { program, .. }
            | Self::Fexit { program, .. }
            | Self::Kprobe { program, .. } => program,
        }
    }
}

impl std::fmt::Display for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tracepoint { category, name, .. } => write!(f, "tracepoint {category}:{name}"),
            Self::TpBtf { event, .. } => write!(f, "tp_btf/{event}"),
            Self::Fentry { function, .. } => write!(f, "fentry/{function}"),
            Self::Fexit { function, .. } => write!(f, "fexit/{function}"),
            Self::Kprobe { function, .. } => write!(f, "kprobe/{function}"),
        }
    }
}

/// One way to attach a probe: every hook, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub mode: AttachMode,
    pub hooks: &'static [Hook],
    /// Whether its programs use `bpf_get_current_task_btf`, task storage
    /// or `bpf_task_pt_regs` (5.11+, 5.15+): the fast paths, which
    /// `attach.disable: [task_btf]` skips so that the old kernels' paths
    /// can be tested on a new one. Reported under `mode` all the same.
    pub task_btf: bool,
}

/// What `attach.disable` can turn off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disable {
    /// Every link of this mode.
    Mode(AttachMode),
    /// Every link whose programs need task BTF helpers ([`Link::task_btf`]).
    TaskBtf,
}

impl Disable {
    /// Every name `attach.disable` accepts.
    pub fn names() -> Vec<&'static str> {
        AttachMode::DISABLEABLE
            .iter()
            .map(|m| m.as_str())
            .chain(["task_btf"])
            .collect()
    }

    pub fn parse(name: &str) -> Option<Self> {
        if name == "task_btf" {
            return Some(Self::TaskBtf);
        }
        AttachMode::parse_disableable(name).map(Self::Mode)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mode(m) => m.as_str(),
            Self::TaskBtf => "task_btf",
        }
    }
}

impl Link {
    /// The entry of `disabled` that rules this link out, if any.
    pub fn disabled_by(&self, disabled: &[Disable]) -> Option<Disable> {
        disabled.iter().copied().find(|d| match d {
            Disable::Mode(m) => *m == self.mode,
            Disable::TaskBtf => self.task_btf,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("program {0} is missing from the embedded BPF object")]
    MissingProgram(&'static str),
    #[error("attaching {program} to {hook}: {reason}")]
    Hook {
        program: &'static str,
        hook: Hook,
        /// Why, in an operator's words where the cause is recognised.
        reason: String,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("reading the kernel's BTF: {0}")]
    Btf(#[from] aya::BtfError),
    #[error("every attach mode of this probe is disabled by attach.disable")]
    AllDisabled,
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

/// Why a hook could not be used, in an operator's words.
pub fn explain(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError { io_error, verifier_log }
            if io_error.raw_os_error() == Some(libc::EPERM) && verifier_log.to_string().trim().is_empty() =>
        {
            "the kernel refuses BPF trampoline programs (load failed with EPERM and an empty verifier log)"
                .to_string()
        }
        ProgramError::KProbeError(KProbeError::FileError { filename, io_error })
            if io_error.kind() == std::io::ErrorKind::NotFound =>
        {
            format!("kprobes are not available: {} does not exist (CONFIG_KPROBES off?)", filename.display())
        }
        e => error_chain(e),
    }
}

/// Attaches `probe` through the first link of its chain that works and is
/// not in `disabled`; returns the mode used.
pub fn attach_chain(
    bpf: &mut Ebpf,
    probe: &str,
    chain: &[Link],
    disabled: &[Disable],
) -> Result<AttachMode, ProbeError> {
    let mut btf: Option<Btf> = None;
    let mut last = ProbeError::AllDisabled;
    for (i, link) in chain.iter().enumerate() {
        if let Some(d) = link.disabled_by(disabled) {
            tracing::info!(
                probe,
                mode = link.mode.as_str(),
                task_btf = link.task_btf,
                disabled = d.as_str(),
                "disabled by attach.disable"
            );
            continue;
        }
        match attach_link(bpf, link, &mut btf) {
            Ok(()) => return Ok(link.mode),
            Err(e) => {
                undo(bpf, link);
                if let Some(next) = chain[i + 1..]
                    .iter()
                    .find(|l| l.disabled_by(disabled).is_none())
                {
                    tracing::info!(
                        probe,
                        mode = link.mode.as_str(),
                        task_btf = link.task_btf,
                        next = next.mode.as_str(),
                        next_task_btf = next.task_btf,
                        reason = %error_chain(&e),
                        "attach mode unavailable; falling back"
                    );
                }
                last = e;
            }
        }
    }
    Err(last)
}

fn attach_link(bpf: &mut Ebpf, link: &Link, btf: &mut Option<Btf>) -> Result<(), ProbeError> {
    for hook in link.hooks {
        attach_hook(bpf, hook, btf)?;
    }
    Ok(())
}

fn kernel_btf(btf: &mut Option<Btf>) -> Result<&Btf, ProbeError> {
    if btf.is_none() {
        *btf = Some(Btf::from_sys_fs()?);
    }
    btf.as_ref().ok_or(ProbeError::MissingProgram("<btf>"))
}

fn attach_hook(bpf: &mut Ebpf, hook: &Hook, btf: &mut Option<Btf>) -> Result<(), ProbeError> {
    let program = hook.program();
    let wrap = |source: ProgramError| ProbeError::Hook {
        program,
        hook: *hook,
        reason: explain(&source),
        source: Box::new(source),
    };
    // BTF first: the program borrow below holds `bpf`.
    let needs_btf = matches!(
        hook,
        Hook::TpBtf { .. } | Hook::Fentry { .. } | Hook::Fexit { .. }
    );
    let btf = if needs_btf {
        Some(kernel_btf(btf)?)
    } else {
        None
    };
    let prog = bpf
        .program_mut(program)
        .ok_or(ProbeError::MissingProgram(program))?;
    match (*hook, btf) {
        (Hook::Tracepoint { category, name, .. }, _) => {
            let p: &mut TracePoint = prog.try_into().map_err(wrap)?;
            p.load().map_err(wrap)?;
            p.attach(category, name).map_err(wrap)?;
        }
        (Hook::TpBtf { event, .. }, Some(btf)) => {
            let p: &mut BtfTracePoint = prog.try_into().map_err(wrap)?;
            p.load(event, btf).map_err(wrap)?;
            p.attach().map_err(wrap)?;
        }
        (Hook::Fentry { function, .. }, Some(btf)) => {
            let p: &mut FEntry = prog.try_into().map_err(wrap)?;
            p.load(function, btf).map_err(wrap)?;
            p.attach().map_err(wrap)?;
        }
        (Hook::Fexit { function, .. }, Some(btf)) => {
            let p: &mut FExit = prog.try_into().map_err(wrap)?;
            p.load(function, btf).map_err(wrap)?;
            p.attach().map_err(wrap)?;
        }
        (Hook::Kprobe { function, .. }, _) => {
            let p: &mut KProbe = prog.try_into().map_err(wrap)?;
            p.load().map_err(wrap)?;
            p.attach(function, 0).map_err(wrap)?;
        }
        (_, None) => return Err(ProbeError::MissingProgram(program)),
    }
    Ok(())
}

/// Unloads every program of `link` that is loaded (which detaches it), so
/// the next link starts from nothing.
fn undo(bpf: &mut Ebpf, link: &Link) {
    for hook in link.hooks {
        if let Some(prog) = bpf.program_mut(hook.program()) {
            let _ = unload(prog);
        }
    }
}

fn unload(prog: &mut Program) -> Result<(), ProgramError> {
    match prog {
        Program::TracePoint(p) => p.unload(),
        Program::BtfTracePoint(p) => p.unload(),
        Program::FEntry(p) => p.unload(),
        Program::FExit(p) => p.unload(),
        Program::KProbe(p) => p.unload(),
        _ => Ok(()),
    }
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

    #[test]
    fn modes() {
        assert_eq!(
            AttachMode::parse_disableable("fentry"),
            Some(AttachMode::Fentry)
        );
        assert_eq!(AttachMode::parse_disableable("tracepoint"), None);
        assert!(!AttachMode::Tracepoint.can_disable());
        assert_eq!(Disable::parse("task_btf"), Some(Disable::TaskBtf));
        assert_eq!(
            Disable::parse("kprobe"),
            Some(Disable::Mode(AttachMode::Kprobe))
        );
        assert_eq!(Disable::parse("tracepoint"), None);
    }

    #[test]
    fn task_btf_rules_out_only_the_links_that_need_it() {
        let fast = Link {
            mode: AttachMode::Tracepoint,
            hooks: &[],
            task_btf: true,
        };
        let slow = Link {
            task_btf: false,
            ..fast
        };
        let off = [Disable::TaskBtf];
        assert_eq!(fast.disabled_by(&off), Some(Disable::TaskBtf));
        assert_eq!(slow.disabled_by(&off), None);
        let tp = [Disable::Mode(AttachMode::Tracepoint)];
        assert!(slow.disabled_by(&tp).is_some());
    }
}
