//! Speaking synthesized audio, in order: on the machine's speakers through rodio, or (with
//! no audio device) on a clock, so `speech_start`, `speech_end` and `is_speaking` keep their
//! meaning headless. Everything played can also be recorded to a WAV file.

use std::num::NonZero;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use pipe_core::{Event, ServerHandle};

use crate::vocab::ServerEvent;

/// How often playback checks for a barge-in.
const TICK: Duration = Duration::from_millis(10);
/// Sentences waiting to be played before synthesis waits for room.
const QUEUE: usize = 32;

/// Where audio goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PlaybackMode {
    /// The speakers when there is an audio device, else the clock (saying so in the log).
    Auto,
    /// The speakers; the server refuses to start without an audio device.
    Speaker,
    /// Nowhere: speech is timed on the clock only (for headless use with --wav or clients
    /// that take the audio events).
    None,
}

/// One sentence's audio, stamped with the barge-in epoch it was made in.
struct Clip {
    samples: Vec<f32>,
    rate: u32,
    epoch: u64,
}

/// The playback queue.
#[derive(Clone)]
pub struct Playback {
    clips: SyncSender<Clip>,
    /// Sentences accepted for playback that are still being synthesized.
    pending: Arc<AtomicUsize>,
    epoch: Arc<AtomicU64>,
    speaking: Arc<AtomicBool>,
    /// The voice's sample rate, once it has loaded.
    rate: Arc<AtomicU32>,
    /// What plays the audio, for get_config.
    pub device: Arc<str>,
}

impl Playback {
    /// Starts the playback thread; `wav` records everything played.
    pub fn start(
        mode: PlaybackMode,
        wav: Option<PathBuf>,
        server: ServerHandle,
    ) -> anyhow::Result<Self> {
        let (clips, queue) = mpsc::sync_channel::<Clip>(QUEUE);
        let epoch = Arc::new(AtomicU64::new(0));
        let speaking = Arc::new(AtomicBool::new(false));
        if let Some(path) = &wav {
            // Fail now, not at the first sentence.
            std::fs::File::create(path)
                .with_context(|| format!("cannot create the WAV file {}", path.display()))?;
        }
        let (ready_tx, ready) = mpsc::channel();
        let thread_epoch = Arc::clone(&epoch);
        let thread_speaking = Arc::clone(&speaking);
        let pending = Arc::new(AtomicUsize::new(0));
        let thread_pending = Arc::clone(&pending);
        std::thread::Builder::new()
            .name("playback".into())
            .spawn(move || {
                // The audio stream is not Send: it lives and dies on this thread.
                let sink = match mode {
                    PlaybackMode::None => Ok(None),
                    _ => rodio::DeviceSinkBuilder::open_default_sink()
                        .map(Some)
                        .map_err(|e| e.to_string()),
                };
                let sink = match (sink, mode) {
                    (Ok(sink), _) => sink,
                    (Err(e), PlaybackMode::Speaker) => {
                        let _ = ready_tx.send(Err(format!(
                            "no audio output device ({e}); run with --playback none (and --wav \
                             FILE, or clients taking audio events) on a headless machine"
                        )));
                        return;
                    }
                    (Err(e), _) => {
                        tracing::warn!(
                            "no audio output device ({e}): speech is timed but not played; \
                             use --wav FILE or audio events to hear it"
                        );
                        None
                    }
                };
                let device = if sink.is_some() {
                    "speaker"
                } else {
                    "none (timed on the clock)"
                };
                let _ = ready_tx.send(Ok(device));
                let player = Player {
                    sink,
                    pending: thread_pending,
                    played_epoch: 0,
                    wav,
                    recorder: None,
                    epoch: thread_epoch,
                    speaking: thread_speaking,
                    server,
                };
                player.run(queue);
            })?;
        let device = ready
            .recv()
            .context("the playback thread died")?
            .map_err(anyhow::Error::msg)?;
        Ok(Self {
            clips,
            epoch,
            speaking,
            pending,
            rate: Arc::new(AtomicU32::new(0)),
            device: device.into(),
        })
    }

    /// Announces a sentence that will be played once synthesized, so speech does not end in
    /// the gap; the returned guard is released when it is queued (or dropped).
    pub fn expect(&self) -> Expected {
        self.pending.fetch_add(1, Ordering::AcqRel);
        Expected(Arc::clone(&self.pending))
    }

    /// Queues one sentence's audio, waiting while the queue is full; returns false if a
    /// barge-in (or `cancelled`) dropped it meanwhile.
    pub fn play(
        &self,
        samples: Vec<f32>,
        rate: u32,
        epoch: u64,
        cancelled: impl Fn() -> bool,
    ) -> bool {
        let mut clip = Clip {
            samples,
            rate,
            epoch,
        };
        loop {
            if self.epoch() != epoch || cancelled() {
                return false;
            }
            match self.clips.try_send(clip) {
                Ok(()) => return true,
                Err(mpsc::TrySendError::Full(back)) => {
                    clip = back;
                    std::thread::sleep(TICK);
                }
                Err(mpsc::TrySendError::Disconnected(_)) => return false,
            }
        }
    }

    /// Records the voice's sample rate.
    pub fn set_rate(&self, rate: u32) {
        self.rate.store(rate, Ordering::Release);
    }

    /// The voice's sample rate, once it has loaded.
    pub fn rate(&self) -> Option<u32> {
        Some(self.rate.load(Ordering::Acquire)).filter(|r| *r > 0)
    }

    /// The current barge-in epoch: audio of older epochs is dropped.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Barge-in: silences what plays and drops what waits.
    pub fn stop(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether speech is playing.
    pub fn is_speaking(&self) -> bool {
        self.speaking.load(Ordering::Acquire)
    }
}

/// A sentence on its way to playback; dropping it says it arrived (or never will).
pub struct Expected(Arc<AtomicUsize>);

impl Drop for Expected {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Player {
    sink: Option<rodio::MixerDeviceSink>,
    /// Sentences accepted for playback and not yet queued (still in synthesis).
    pending: Arc<AtomicUsize>,
    /// The epoch of the last clip played.
    played_epoch: u64,
    /// Where to record, and the recording once the first clip gave its rate.
    wav: Option<PathBuf>,
    recorder: Option<hound::WavWriter<std::io::BufWriter<std::fs::File>>>,
    epoch: Arc<AtomicU64>,
    speaking: Arc<AtomicBool>,
    server: ServerHandle,
}

impl Player {
    fn run(mut self, queue: Receiver<Clip>) {
        let player = self
            .sink
            .as_ref()
            .map(|s| rodio::Player::connect_new(s.mixer()));
        loop {
            let clip = if self.speaking.load(Ordering::Acquire) {
                // Mid-speech: the next sentence may still be in synthesis. Speech ends only
                // when nothing is queued and nothing is on its way.
                match queue.recv_timeout(TICK) {
                    Ok(clip) => clip,
                    Err(RecvTimeoutError::Timeout) => {
                        let epoch_changed = self.epoch.load(Ordering::Acquire) != self.played_epoch;
                        if epoch_changed || self.pending.load(Ordering::Acquire) == 0 {
                            self.speaking.store(false, Ordering::Release);
                            self.server.broadcast(&Event::new(ServerEvent::SpeechEnd));
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            } else {
                match queue.recv_timeout(Duration::from_millis(200)) {
                    Ok(clip) => clip,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            };
            let epoch = self.epoch.load(Ordering::Acquire);
            if clip.epoch != epoch || clip.samples.is_empty() {
                continue;
            }
            self.played_epoch = epoch;
            if !self.speaking.swap(true, Ordering::AcqRel) {
                self.server.broadcast(&Event::new(ServerEvent::SpeechStart));
            }
            self.record(&clip.samples, clip.rate);
            let length = Duration::from_secs_f64(clip.samples.len() as f64 / clip.rate as f64);
            let started = Instant::now();
            if let (Some(player), Some(rate), Some(mono)) =
                (&player, NonZero::new(clip.rate), NonZero::new(1u16))
            {
                player.append(rodio::buffer::SamplesBuffer::new(mono, rate, clip.samples));
            }
            // Wait for the clip to finish, unless a barge-in comes first.
            let interrupted = loop {
                if self.epoch.load(Ordering::Acquire) != epoch {
                    break true;
                }
                let done = match &player {
                    Some(p) => p.empty(),
                    None => started.elapsed() >= length,
                };
                if done {
                    break false;
                }
                std::thread::sleep(TICK);
            };
            if interrupted {
                if let Some(p) = &player {
                    p.clear();
                    p.play();
                }
                self.speaking.store(false, Ordering::Release);
                self.server.broadcast(&Event::new(ServerEvent::SpeechEnd));
            }
        }
    }

    fn record(&mut self, samples: &[f32], rate: u32) {
        if self.recorder.is_none() {
            let Some(path) = self.wav.take() else {
                return;
            };
            match hound::WavWriter::create(&path, crate::wav::mono16(rate)) {
                Ok(writer) => self.recorder = Some(writer),
                Err(e) => {
                    tracing::error!("cannot record to {}: {e}", path.display());
                    return;
                }
            }
        }
        let Some(wav) = &mut self.recorder else {
            return;
        };
        let result = samples
            .iter()
            .try_for_each(|s| wav.write_sample(crate::wav::to_pcm16(*s)))
            .and_then(|()| wav.flush());
        if let Err(e) = result {
            tracing::error!("cannot write the WAV recording: {e}; recording stops");
            self.recorder = None;
        }
    }
}
