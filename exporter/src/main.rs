//! edgewatch: eBPF observability exporter. The binary is the library's
//! command line (cli.rs); everything else lives in the library.

fn main() -> std::process::ExitCode {
    edgewatch::cli::main()
}
