//! What `/healthz` and `/readyz` answer.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use async_nats::connection::State;

const STARTING: u8 = 0;
const WARMING_UP: u8 = 1;
const SERVING: u8 = 2;
const STOPPING: u8 = 3;
const STANDING_BY: u8 = 4;

/// A role's health, shared between the role (which moves it through starting → warming up →
/// serving → stopping) and the HTTP endpoint (which reads it). Cloning shares it.
#[derive(Clone, Default)]
pub struct Health {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    client: OnceLock<async_nats::Client>,
    state: AtomicU8,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("ready", &self.readiness())
            .finish()
    }
}

impl Health {
    /// Judge readiness by this client's connection (the first client given counts).
    pub fn watch(&self, client: &async_nats::Client) {
        let _ = self.inner.client.set(client.clone());
    }

    /// The role is warming up its device (JIT, autotune): alive, not ready.
    pub fn warming_up(&self) {
        self.inner.state.store(WARMING_UP, Ordering::Relaxed);
    }

    /// The role runs its loop: ready while connected.
    pub fn serving(&self) {
        self.inner.state.store(SERVING, Ordering::Relaxed);
    }

    /// The role waits while another instance does its work (an aggregator while another
    /// counts): alive, not ready.
    pub fn standing_by(&self) {
        self.inner.state.store(STANDING_BY, Ordering::Relaxed);
    }

    /// The role is draining or has stopped: not ready, so that no new work is sent its way.
    pub fn stopping(&self) {
        self.inner.state.store(STOPPING, Ordering::Relaxed);
    }

    /// Whether [`Health::stopping`] was called: the role is draining.
    pub fn is_stopping(&self) -> bool {
        self.inner.state.load(Ordering::Relaxed) == STOPPING
    }

    /// Whether the role's NATS connection is up now.
    pub fn connected(&self) -> bool {
        self.inner
            .client
            .get()
            .is_some_and(|c| c.connection_state() == State::Connected)
    }

    /// `Ok` when ready; otherwise why not, in one line.
    pub fn readiness(&self) -> Result<(), &'static str> {
        match self.inner.client.get().map(|c| c.connection_state()) {
            None | Some(State::Pending) => return Err("not connected to NATS yet"),
            Some(State::Disconnected) => return Err("disconnected from NATS; reconnecting"),
            Some(State::Connected) => {}
        }
        match self.inner.state.load(Ordering::Relaxed) {
            SERVING => Ok(()),
            WARMING_UP => Err("warming up the device (JIT compilation and autotune)"),
            STOPPING => Err("shutting down"),
            STARTING => Err("starting: setting up streams and consumers"),
            STANDING_BY => Err("standing by while another instance does the work"),
            _ => Err("in an unknown state"),
        }
    }
}
