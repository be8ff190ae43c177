//! What the admin port answers from ([`AdminView`]): the gateway's shared
//! state and, in a fleet, the fleet itself. A room of its own so the admin
//! port's pages and APIs can share it without importing the admin module.

use crate::shared::Shared;
use std::sync::Arc;

/// What the admin port answers from: the gateway's shared state and, in a
/// fleet, the fleet itself (its records, Redis, peer links). Only start-up and
/// this port hold the fleet; everything else reaches it through the interfaces
/// it stands behind (exits, session pins, limits).
pub struct AdminView {
    /// The gateway's shared state.
    pub shared: Arc<Shared>,
    /// Fleet membership (`--redis`); `None` for a gateway on its own.
    pub fleet: Option<Arc<crate::fleet::Fleet>>,
}

impl std::ops::Deref for AdminView {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.shared
    }
}
