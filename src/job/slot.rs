//! One slot of the job table: free, loading its code, or running.

use super::load::Loading;
use super::running::Running;

pub enum JobState {
    Free,
    Loading(Loading),
    Running(Running),
}

impl JobState {
    pub(super) fn id(&self) -> Option<u32> {
        match self {
            JobState::Free => None,
            JobState::Loading(l) => Some(l.id),
            JobState::Running(r) => Some(r.id),
        }
    }

    pub(super) fn uid(&self) -> Option<u32> {
        match self {
            JobState::Free => None,
            JobState::Loading(l) => Some(l.uid),
            JobState::Running(r) => Some(r.uid),
        }
    }
}
