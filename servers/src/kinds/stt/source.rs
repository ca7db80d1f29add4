//! Live audio sources for the stt server: a microphone through cpal, or a WAV file played into
//! the server in real time (so the live path runs headless). Each yields 16 kHz mono chunks.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use models::stt::{audio::to_16k_mono, SAMPLE_RATE};

use crate::wav::read_wav;

/// Audio per chunk from a file played as a microphone: one VAD window (512 samples), about what
/// a microphone's callback delivers at a time.
const CHUNK: Duration = Duration::from_millis(32);

/// Where live audio comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A microphone: the default one, or one named as `list_devices` shows it.
    Microphone(Option<String>),
    /// A WAV file, played in real time (or as fast as possible), optionally looping.
    File {
        /// The file.
        path: PathBuf,
        /// Whether to pace it in real time.
        realtime: bool,
    },
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Microphone(None) => f.write_str("microphone (default)"),
            Self::Microphone(Some(name)) => write!(f, "microphone: {name}"),
            Self::File { path, .. } => write!(f, "file: {}", path.display()),
        }
    }
}

/// The names of the input devices, and the default one.
pub fn list_devices() -> (Vec<String>, Option<String>) {
    let host = cpal::default_host();
    let name = |d: &cpal::Device| d.description().map(|d| d.name().to_string()).ok();
    let devices = host
        .input_devices()
        .map(|devices| devices.filter_map(|d| name(&d)).collect())
        .unwrap_or_default();
    let default = host.default_input_device().and_then(|d| name(&d));
    (devices, default)
}

/// A running source, stopped when this is dropped.
pub struct Running {
    stop: Arc<AtomicBool>,
}

impl Running {
    /// Tells this source from others.
    pub fn id(&self) -> usize {
        Arc::as_ptr(&self.stop) as usize
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Starts `source`: its 16 kHz mono chunks arrive on the receiver until it ends or is stopped.
pub fn start(source: &Source) -> anyhow::Result<(Running, Receiver<Vec<f32>>)> {
    let (tx, chunks) = mpsc::sync_channel::<Vec<f32>>(600);
    let stop = Arc::new(AtomicBool::new(false));
    match source {
        Source::File { path, realtime } => {
            let (samples, rate, channels) = read_wav(path)?;
            if samples.is_empty() {
                bail!("{} holds no audio", path.display());
            }
            let audio = to_16k_mono(&samples, rate, channels);
            let realtime = *realtime;
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("stt-file".into())
                .spawn(move || {
                    let per_chunk = (SAMPLE_RATE as f64 * CHUNK.as_secs_f64()) as usize;
                    let started = Instant::now();
                    for (i, chunk) in audio.chunks(per_chunk).enumerate() {
                        if stop.load(Ordering::Acquire) {
                            return;
                        }
                        if realtime {
                            // Pace by the clock, so a slow consumer catches up instead of drifting.
                            // A chunk leaves once its last sample has "been heard", as from a
                            // microphone.
                            let due = started + CHUNK * (i as u32 + 1);
                            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                                std::thread::sleep(wait);
                            }
                        }
                        if tx.send(chunk.to_vec()).is_err() {
                            return;
                        }
                    }
                })?;
        }
        Source::Microphone(wanted) => {
            let host = cpal::default_host();
            let device = match wanted {
                None => host.default_input_device(),
                Some(name) => host.input_devices().ok().and_then(|mut devices| {
                    devices.find(|d| d.description().is_ok_and(|desc| desc.name() == name))
                }),
            };
            let Some(device) = device else {
                bail!(
                    "no microphone{}: list_devices shows what there is; on a machine without one, \
                     listen to a WAV file instead ({{\"file\": PATH}})",
                    wanted
                        .as_ref()
                        .map(|n| format!(" named '{n}'"))
                        .unwrap_or_default()
                );
            };
            let config = device
                .default_input_config()
                .context("the microphone has no usable input configuration")?;
            let (rate, channels) = (config.sample_rate(), config.channels());
            let stop_thread = Arc::clone(&stop);
            // The cpal stream is not Send: it lives on its own thread until stopped.
            let (ready_tx, ready) = mpsc::channel();
            std::thread::Builder::new()
                .name("stt-microphone".into())
                .spawn(move || {
                    let stream = device.build_input_stream(
                        config.config(),
                        move |data: &[f32], _: &cpal::InputCallbackInfo| {
                            let _ = tx.try_send(to_16k_mono(data, rate, channels));
                        },
                        |e| tracing::error!("microphone error: {e}"),
                        None,
                    );
                    let stream = match stream.and_then(|s| s.play().map(|()| s)) {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    while !stop_thread.load(Ordering::Acquire) {
                        std::thread::sleep(CHUNK);
                    }
                    drop(stream);
                })?;
            ready
                .recv()
                .context("the microphone thread died")?
                .map_err(|e| anyhow::anyhow!("cannot open the microphone: {e}"))?;
        }
    }
    Ok((Running { stop }, chunks))
}
