//! Choosing the compute device once, at start-up.

pub use candle_core::Device;

/// The device models load onto: the first CUDA GPU when built with `cuda`, the Metal GPU when
/// built with `metal`, else the CPU. A GPU build on a machine without that GPU falls back to
/// the CPU and says so in the log.
pub fn best_device() -> Device {
    #[cfg(feature = "cuda")]
    match Device::new_cuda(0) {
        Ok(device) => return device,
        Err(e) => tracing::warn!("built with cuda but no CUDA GPU is usable ({e}); using the CPU"),
    }
    #[cfg(feature = "metal")]
    match Device::new_metal(0) {
        Ok(device) => return device,
        Err(e) => {
            tracing::warn!("built with metal but no Metal GPU is usable ({e}); using the CPU")
        }
    }
    Device::Cpu
}

/// A short name for logs and `get_config`.
pub fn describe(device: &Device) -> &'static str {
    match device {
        Device::Cpu => "cpu",
        Device::Cuda(_) => "cuda",
        Device::Metal(_) => "metal",
    }
}

/// Fixes the number of threads candle's CPU kernels use, once, as candle would choose it (its
/// `RAYON_NUM_THREADS`). candle asks on every parallel operation, and where it cannot read the
/// preferred CPUs it re-reads `/proc/cpuinfo` each time: a tenth of a generation step. Call
/// at start-up, before other threads exist (it sets an environment variable); a value already
/// set is kept.
pub fn settle_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = candle_core::utils::get_num_threads();
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
}

/// The instruction sets this binary was compiled to assume (on x86-64, `x86-64-v3` in
/// `.cargo/config.toml`: AVX2, FMA, F16C, BMI2) that this CPU lacks. The quantized kernels
/// pick AVX-512 and VNNI at run time, but everything else (candle's kernels, whisper.cpp, the
/// compiler's own vectorized loops) takes the build's level as given, so a CPU below it would
/// die of an illegal instruction: call this first and stop with its answer instead.
pub fn missing_cpu_features() -> Vec<&'static str> {
    let mut missing = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! check {
            ($($feature:tt),*) => {$(
                if cfg!(target_feature = $feature) && !std::arch::is_x86_feature_detected!($feature) {
                    missing.push($feature);
                }
            )*};
        }
        check!(
            "sse4.2",
            "avx",
            "avx2",
            "fma",
            "f16c",
            "bmi2",
            "avxvnni",
            "avx512f",
            "avx512bw",
            "avx512vl",
            "avx512dq",
            "avx512vnni"
        );
    }
    missing
}
