//! [`Handles`]: the live handles of a provider's sandboxes, by id, so that `provision` and
//! `attach` of one id give the same handle while anyone holds it (one lock, one set of
//! forwarders and process records per sandbox). Weak references: a handle nobody holds is
//! dropped, and the provider makes a new one from disk at the next `attach`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use cthulu_types::SandboxId;

#[derive(Debug)]
pub struct Handles<T> {
    handles: Mutex<HashMap<SandboxId, Weak<T>>>,
}

impl<T> Default for Handles<T> {
    fn default() -> Self {
        Handles {
            handles: Mutex::new(HashMap::new()),
        }
    }
}

impl<T> Handles<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SandboxId, Weak<T>>> {
        self.handles
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Keeps `sandbox` as the handle of `sandbox_id` (forgetting handles nobody holds).
    pub fn remember(&self, sandbox_id: SandboxId, sandbox: T) -> Arc<T> {
        self.keep(sandbox_id, Arc::new(sandbox))
    }

    /// [`Handles::remember`] for a handle already in its `Arc` (one that refers to itself).
    pub fn keep(&self, sandbox_id: SandboxId, sandbox: Arc<T>) -> Arc<T> {
        let mut handles = self.lock();
        handles.retain(|_, handle| handle.strong_count() > 0);
        handles.insert(sandbox_id, Arc::downgrade(&sandbox));
        sandbox
    }

    /// The live handle of `sandbox_id`, if someone still holds it.
    pub fn get(&self, sandbox_id: &SandboxId) -> Option<Arc<T>> {
        self.lock().get(sandbox_id).and_then(Weak::upgrade)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handle_lives_while_held() {
        let handles = Handles::default();
        let id = SandboxId::generate();
        let held = handles.remember(id.clone(), 7);
        assert!(Arc::ptr_eq(&handles.get(&id).unwrap(), &held));
        drop(held);
        assert!(handles.get(&id).is_none());
    }
}
