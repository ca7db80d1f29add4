//! WAV files, the headless stand-in for microphones and speakers: read any common PCM WAV,
//! write mono 16-bit ones.

use std::path::Path;

use anyhow::{bail, Context};

/// Reads a WAV file as interleaved f32 samples, its rate and channel count.
pub fn read_wav(path: &Path) -> anyhow::Result<(Vec<f32>, u32, u16)> {
    let reader = hound::WavReader::open(path)
        .with_context(|| format!("cannot read {} as a WAV file", path.display()))?;
    samples(reader).with_context(|| path.display().to_string())
}

/// Decodes a WAV file held in memory (an upload), as [`read_wav`] reads one from disk. A WAV
/// written while it streamed, whose header cannot know its length, is read to its end.
pub fn decode_wav(bytes: &[u8]) -> anyhow::Result<(Vec<f32>, u32, u16)> {
    let reader = hound::WavReader::new(std::io::Cursor::new(bytes))
        .context("the audio is not a WAV file (convert it first, e.g. `ffmpeg -i IN -ar 16000 -ac 1 OUT.wav`)")?;
    samples(reader)
}

/// Whether a sample is before the end of the data: a streamed WAV's data ends where the
/// file does.
fn before_stream_end<T>(streamed: bool) -> impl Fn(&Result<T, hound::Error>) -> bool {
    move |result| {
        // hound reports running out of bytes as an I/O error of its own.
        !(streamed && matches!(result, Err(hound::Error::IoError(_))))
    }
}

fn samples<R: std::io::Read>(
    mut reader: hound::WavReader<R>,
) -> anyhow::Result<(Vec<f32>, u32, u16)> {
    let spec = reader.spec();
    // A header's rate and channels are checked before any sample is read: a WAV that says
    // 0 Hz, or 1 Hz for a gigabyte, must not reach the resampler.
    pipe_core::audio::AudioChunk::check_format(spec.sample_rate, spec.channels)
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    // Streaming writers put the largest size they can in the header (0xFFFFFFFF bytes).
    let streamed =
        u64::from(reader.len()) * u64::from(spec.bits_per_sample.div_ceil(8)) >= 0xFFFF_0000;
    let samples: Vec<f32> = match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Float, 32) => reader
            .samples::<f32>()
            .take_while(before_stream_end(streamed))
            .collect::<Result<_, _>>()?,
        (hound::SampleFormat::Int, bits @ 1..=32) => {
            let scale = (1u64 << (bits - 1)) as f32;
            reader
                .samples::<i32>()
                .take_while(before_stream_end(streamed))
                .map(|s| s.map(|s| s as f32 / scale))
                .collect::<Result<_, _>>()?
        }
        (format, bits) => bail!("unsupported WAV sample format {format:?} with {bits} bits"),
    };
    Ok((samples, spec.sample_rate, spec.channels))
}

/// A chunk's samples as little-endian 16-bit PCM, its channels kept: its own bytes when they
/// are that already (what the tts server sends), without a round trip through floats.
pub fn pcm16_bytes(chunk: &pipe_core::audio::AudioChunk) -> Vec<u8> {
    match chunk.encoding {
        pipe_core::audio::Encoding::PcmS16Le => chunk.data.clone(),
        _ => chunk
            .to_f32()
            .iter()
            .flat_map(|&s| to_pcm16(s).to_le_bytes())
            .collect(),
    }
}

/// A WAV file's length in seconds, from its header alone (checked as [`read_wav`] checks it).
pub fn wav_seconds(path: &Path) -> anyhow::Result<f64> {
    let reader = hound::WavReader::open(path)
        .with_context(|| format!("cannot read {} as a WAV file", path.display()))?;
    let spec = reader.spec();
    pipe_core::audio::AudioChunk::check_format(spec.sample_rate, spec.channels)
        .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message))?;
    Ok(f64::from(reader.duration()) / f64::from(spec.sample_rate))
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

/// Whether a client may have the server write a WAV at `path` (tts `synthesize` with `wav`):
/// an absolute path (the server's working directory is not the client's), not a symbolic link,
/// and either nothing yet or a mono 16-bit WAV, as the server writes. Anything else the user
/// can write (a document, a key, a file a link points to) is never overwritten this way.
pub fn check_client_path(path: &Path) -> Result<(), String> {
    if !path.is_absolute() {
        return Err(format!(
            "{}: give an absolute path (the server's working directory is not yours)",
            path.display()
        ));
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("{}: {e}", path.display())),
        Ok(meta) if meta.file_type().is_symlink() => Err(format!(
            "{} is a symbolic link: the server writes only to the path itself",
            path.display()
        )),
        Ok(meta) if !meta.is_file() => Err(format!("{} is not a file", path.display())),
        Ok(_) => match hound::WavReader::open(path) {
            Ok(reader) if reader.spec() == mono16(reader.spec().sample_rate) => Ok(()),
            _ => Err(format!(
                "{} exists and is not a mono 16-bit WAV: the server overwrites only WAV files \
                 of the kind it writes; choose a new name",
                path.display()
            )),
        },
    }
}

/// Writes a WAV where a client asked for it, after [`check_client_path`]: into a new file
/// beside it, then renamed over it, so a link put there meanwhile is replaced, not followed.
pub fn write_client_wav(path: &Path, rate: u32, samples: &[f32]) -> Result<(), String> {
    check_client_path(path)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let temporary = path.with_file_name(format!(".{name}.cpipe-{}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temporary)
        .map_err(hound::Error::from)
        .and_then(|file| {
            let mut wav = hound::WavWriter::new(std::io::BufWriter::new(file), mono16(rate))?;
            for s in samples {
                wav.write_sample(to_pcm16(*s))?;
            }
            wav.finalize()
        })
        .map_err(|e| e.to_string())
        .and_then(|()| std::fs::rename(&temporary, path).map_err(|e| e.to_string()));
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written.map_err(|e| format!("cannot write {}: {e}", path.display()))
}
