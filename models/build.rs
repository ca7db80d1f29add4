//! Names the SIMD levels the quantized kernels are built for, from the target's features
//! (`target-cpu=native` in `.cargo/config.toml`), so each kernel's gate is one word:
//! `avx2_kernels` (AVX2, FMA and F16C on x86-64) and `avx512_kernels` (those and AVX-512 F, BW,
//! VL and VNNI).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(avx2_kernels)");
    println!("cargo::rustc-check-cfg=cfg(avx512_kernels)");
    println!("cargo::rerun-if-changed=build.rs");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    let has = |wanted: &[&str]| wanted.iter().all(|f| features.split(',').any(|g| g == *f));
    let avx2 = arch == "x86_64" && has(&["avx2", "fma", "f16c"]);
    if avx2 {
        println!("cargo::rustc-cfg=avx2_kernels");
    }
    if avx2 && has(&["avx512f", "avx512bw", "avx512vl", "avx512vnni"]) {
        println!("cargo::rustc-cfg=avx512_kernels");
    }
}
