fn main() -> std::process::ExitCode {
    // Client commands print to pipes (`morag-hub jobs | head`): end quietly when the reader
    // goes away, like other command-line tools. The daemon keeps Rust's default (ignored
    // SIGPIPE, errors on closed sockets).
    if std::env::args().nth(1).as_deref() != Some("serve") {
        // SAFETY: restoring the default disposition of one signal at start, before any thread.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    morag_hub::cli::main()
}
