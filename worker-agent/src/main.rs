//! `morag-agent`: see [`morag_agent::cli`].

fn main() -> std::process::ExitCode {
    // NVML numbers GPUs in PCI bus order; CUDA's ordinals (whisper.cpp, cudarc, ONNX Runtime)
    // follow the same order only with this set, before any CUDA call (here: one thread yet).
    if std::env::var_os("CUDA_DEVICE_ORDER").is_none() {
        std::env::set_var("CUDA_DEVICE_ORDER", "PCI_BUS_ID");
    }
    morag_agent::cli::main()
}
