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

/// What to do when no microphone can be opened.
const NO_MICROPHONE: &str = "list_devices shows what there is; on a machine without one, \
                             listen to a WAV file instead ({\"file\": PATH})";

/// Where live audio comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A microphone: the default one, or one named by its index or a part of its name.
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

/// An input device as `list_devices` shows it (named-pipes 0.7's shape).
#[derive(Debug, Clone, PartialEq)]
pub struct InputDevice {
    /// Its place in the list: what `set_device` takes.
    pub index: usize,
    /// Its name.
    pub name: String,
    /// Its most input channels.
    pub channels: u16,
}

impl InputDevice {
    /// As `list_devices` lists it: `{"index","name","channels"}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"index": self.index, "name": self.name, "channels": self.channels})
    }
}

/// The host's input devices with what `list_devices` shows of each, in one order: indexes
/// are places in it.
fn host_devices(host: &cpal::Host) -> Vec<(cpal::Device, InputDevice)> {
    let Ok(devices) = host.input_devices() else {
        return Vec::new();
    };
    devices
        .filter_map(|d| {
            let name = d.description().ok()?.name().to_string();
            let channels = d.default_input_config().map_or(0, |c| c.channels());
            Some((d, name, channels))
        })
        .enumerate()
        .map(|(index, (device, name, channels))| {
            let info = InputDevice {
                index,
                name,
                channels,
            };
            (device, info)
        })
        .collect()
}

/// The input devices, and the index of the default one.
pub fn input_devices() -> (Vec<InputDevice>, Option<usize>) {
    let host = cpal::default_host();
    let devices: Vec<InputDevice> = host_devices(&host).into_iter().map(|(_, i)| i).collect();
    let default = host
        .default_input_device()
        .and_then(|d| d.description().ok().map(|d| d.name().to_string()))
        .and_then(|n| devices.iter().find(|d| d.name == n).map(|d| d.index));
    (devices, default)
}

/// The input device a request names: its index (a number, or digits), or a part of its name
/// (any case), as named-pipes 0.7's `set_device` takes it.
pub fn find_device(wanted: &str, devices: &[InputDevice]) -> Option<InputDevice> {
    if let Ok(index) = wanted.trim().parse::<usize>() {
        return devices.iter().find(|d| d.index == index).cloned();
    }
    let wanted = wanted.to_lowercase();
    devices
        .iter()
        .find(|d| d.name.to_lowercase().contains(&wanted))
        .cloned()
}

/// A running source, stopped when this is dropped.
pub struct Running {
    stop: Arc<AtomicBool>,
    /// What it is.
    pub source: Source,
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
                Some(wanted) => {
                    let devices = host_devices(&host);
                    let infos: Vec<InputDevice> = devices.iter().map(|(_, i)| i.clone()).collect();
                    find_device(wanted, &infos).map(|found| devices[found.index].0.clone())
                }
            };
            let Some(device) = device else {
                bail!(
                    "no microphone{}: {NO_MICROPHONE}",
                    wanted
                        .as_ref()
                        .map(|n| format!(" matching '{n}'"))
                        .unwrap_or_default()
                );
            };
            let config = device.default_input_config().with_context(|| {
                format!("the microphone has no usable input configuration ({NO_MICROPHONE})")
            })?;
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
                .map_err(|e| {
                    anyhow::anyhow!("cannot open the microphone: {e} ({NO_MICROPHONE})")
                })?;
        }
    }
    let source = source.clone();
    Ok((Running { stop, source }, chunks))
}
