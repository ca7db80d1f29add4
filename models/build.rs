//! Names the SIMD level the quantized kernels are built for, from the target's features
//! (`x86-64-v3` in `.cargo/config.toml`), so each kernel's gate is one word: `avx2_kernels`
//! (AVX2, FMA and F16C on x86-64). AVX-512 and VNNI are picked at run time
//! (`src/llm/quant/simd.rs`).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(avx2_kernels)");
    println!("cargo::rerun-if-changed=build.rs");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    let has = |wanted: &[&str]| wanted.iter().all(|f| features.split(',').any(|g| g == *f));
    if arch == "x86_64" && has(&["avx2", "fma", "f16c"]) {
        println!("cargo::rustc-cfg=avx2_kernels");
    }
}
