//! WAV files, the headless stand-in for microphones and speakers: read any common PCM WAV,
//! write mono 16-bit ones.

use std::path::Path;

use anyhow::{bail, Context};

/// Reads a WAV file as interleaved f32 samples, its rate and channel count.
pub fn read_wav(path: &Path) -> anyhow::Result<(Vec<f32>, u32, u16)> {
    let mut reader = hound::WavReader::open(path)
        .with_context(|| format!("cannot read {} as a WAV file", path.display()))?;
    let spec = reader.spec();
    // A header's rate and channels are checked before any sample is read: a WAV that says
    // 0 Hz, or 1 Hz for a gigabyte, must not reach the resampler.
    pipe_core::audio::AudioChunk::check_format(spec.sample_rate, spec.channels)
        .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message))?;
    let samples: Vec<f32> = match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Float, 32) => reader.samples::<f32>().collect::<Result<_, _>>()?,
        (hound::SampleFormat::Int, bits @ 1..=32) => {
            let scale = (1u64 << (bits - 1)) as f32;
            reader
                .samples::<i32>()
                .map(|s| s.map(|s| s as f32 / scale))
                .collect::<Result<_, _>>()?
        }
        (format, bits) => bail!("unsupported WAV sample format {format:?} with {bits} bits"),
    };
    Ok((samples, spec.sample_rate, spec.channels))
}

/// The format written: mono, 16-bit PCM at `rate`.
pub fn mono16(rate: u32) -> hound::WavSpec {
    hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    }
}

/// A sample in [-1, 1] as 16-bit PCM (out-of-range values clipped).
pub fn to_pcm16(sample: f32) -> i16 {
    (sample.clamp(-1.0, 1.0) * 32767.0) as i16
}

/// Writes mono float samples as a 16-bit WAV.
pub fn write_wav(path: &Path, rate: u32, samples: &[f32]) -> Result<(), hound::Error> {
    let mut wav = hound::WavWriter::create(path, mono16(rate))?;
    for s in samples {
        wav.write_sample(to_pcm16(*s))?;
    }
    wav.finalize()
}
