//! Getting any common audio into what Whisper and the VAD take: 16 kHz mono f32.

use super::SAMPLE_RATE;

/// Mixes interleaved `channels` down to mono and resamples from `rate` to 16 kHz, with a
/// windowed-sinc filter that keeps speech clean (no aliasing from 44.1 or 48 kHz sources).
pub fn to_16k_mono(samples: &[f32], rate: u32, channels: u16) -> Vec<f32> {
    let channels = channels.max(1) as usize;
    let mono: Vec<f32> = samples
        .chunks_exact(channels)
        .map(|frame| frame.iter().sum::<f32>() / channels as f32)
        .collect();
    resample(&mono, rate, SAMPLE_RATE)
}

/// Band-limited resampling of mono audio.
pub fn resample(input: &[f32], from: u32, to: u32) -> Vec<f32> {
    if from == to || input.is_empty() {
        return input.to_vec();
    }
    let ratio = to as f64 / from as f64;
    // Low-pass at the lower Nyquist frequency, a little below it.
    let cutoff = ratio.min(1.0) * 0.95;
    const HALF_TAPS: isize = 16;
    let half_width = (HALF_TAPS as f64 / cutoff).ceil() as isize;
    let out_len = (input.len() as f64 * ratio).floor() as usize;
    let mut output = Vec::with_capacity(out_len);
    for n in 0..out_len {
        let center = n as f64 / ratio;
        let first = (center.floor() as isize - half_width).max(0);
        let last = (center.floor() as isize + half_width).min(input.len() as isize - 1);
        let mut acc = 0.0f64;
        let mut norm = 0.0f64;
        for i in first..=last {
            let x = (i as f64 - center) * cutoff;
            let sinc = if x.abs() < 1e-9 {
                1.0
            } else {
                (std::f64::consts::PI * x).sin() / (std::f64::consts::PI * x)
            };
            // Hann window over the kernel's support.
            let w = (i as f64 - center) / (half_width as f64 + 1.0);
            let window = 0.5 + 0.5 * (std::f64::consts::PI * w).cos();
            let k = sinc * window;
            acc += input[i as usize] as f64 * k;
            norm += k;
        }
        output.push(if norm.abs() > 1e-12 {
            (acc / norm) as f32
        } else {
            0.0
        });
    }
    output
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(freq: f32, rate: u32, seconds: f32) -> Vec<f32> {
        (0..(rate as f32 * seconds) as usize)
            .map(|i| (2.0 * std::f32::consts::PI * freq * i as f32 / rate as f32).sin())
            .collect()
    }

    fn rms(x: &[f32]) -> f32 {
        (x.iter().map(|s| s * s).sum::<f32>() / x.len() as f32).sqrt()
    }

    #[test]
    fn a_tone_keeps_its_length_and_level() {
        let out = resample(&tone(440.0, 48_000, 1.0), 48_000, 16_000);
        assert_eq!(out.len(), 16_000);
        assert!((rms(&out[1000..15000]) - 0.707).abs() < 0.02);
    }

    #[test]
    fn frequencies_above_the_new_nyquist_are_removed() {
        let out = resample(&tone(12_000.0, 48_000, 1.0), 48_000, 16_000);
        assert!(rms(&out[1000..15000]) < 0.05, "aliasing: rms {}", rms(&out));
    }

    #[test]
    fn stereo_is_mixed_down() {
        let stereo: Vec<f32> = (0..32_000)
            .map(|i| if i % 2 == 0 { 0.5 } else { -0.5 })
            .collect();
        let out = to_16k_mono(&stereo, 16_000, 2);
        assert_eq!(out.len(), 16_000);
        assert!(out.iter().all(|s| s.abs() < 1e-6));
    }
}
