//! The order an engine takes its jobs in: by priority, then client by client in turn, so a
//! client with many queued jobs (a long text cut into sentences) never starves another.

use std::collections::VecDeque;

/// Where a job stands in line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    /// The client that asked (`None`: the server's own work, such as live transcription).
    pub client: Option<u32>,
    /// Lower goes first; within one priority, clients take turns.
    pub priority: u8,
}

impl Place {
    /// A client's job at the one priority most engines use.
    pub fn client(client: Option<u32>) -> Self {
        Self {
            client,
            priority: 0,
        }
    }
}

/// Jobs in lines of one (priority, client) each, served in turn.
pub struct FairQueue<T> {
    lines: VecDeque<(Place, VecDeque<T>)>,
}

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        Self {
            lines: VecDeque::new(),
        }
    }
}

impl<T> FairQueue<T> {
    /// Queues `item` at the back of its client's line.
    pub fn push(&mut self, place: Place, item: T) {
        match self.lines.iter_mut().find(|(p, _)| *p == place) {
            Some((_, line)) => line.push_back(item),
            None => self.lines.push_back((place, VecDeque::from([item]))),
        }
    }

    /// The next job: of the most urgent priority waiting, the first job of the client whose
    /// turn it is.
    pub fn pop(&mut self) -> Option<T> {
        let urgent = self.lines.iter().map(|(p, _)| p.priority).min()?;
        let at = self.lines.iter().position(|(p, _)| p.priority == urgent)?;
        let (place, mut line) = self.lines.remove(at)?;
        let item = line.pop_front();
        if !line.is_empty() {
            self.lines.push_back((place, line));
        }
        item
    }

    /// Whether no job waits.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The waiting jobs in the order [`FairQueue::pop`] would take them if none arrived.
    pub fn in_order(&self) -> Vec<&T> {
        let mut priorities: Vec<u8> = self.lines.iter().map(|(p, _)| p.priority).collect();
        priorities.sort_unstable();
        priorities.dedup();
        let mut order = Vec::new();
        for priority in priorities {
            let lines: Vec<&VecDeque<T>> = self
                .lines
                .iter()
                .filter(|(p, _)| p.priority == priority)
                .map(|(_, line)| line)
                .collect();
            let longest = lines.iter().map(|l| l.len()).max().unwrap_or(0);
            for turn in 0..longest {
                order.extend(lines.iter().filter_map(|line| line.get(turn)));
            }
        }
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(queue: &mut FairQueue<&'static str>) -> Vec<&'static str> {
        std::iter::from_fn(|| queue.pop()).collect()
    }

    #[test]
    fn the_order_shown_is_the_order_taken() {
        let mut queue = FairQueue::default();
        let urgent = Place {
            client: Some(9),
            priority: 0,
        };
        let later = |client| Place {
            client: Some(client),
            priority: 1,
        };
        for (place, item) in [
            (later(1), "a1"),
            (later(1), "a2"),
            (later(1), "a3"),
            (later(2), "b1"),
            (urgent, "u1"),
            (later(3), "c1"),
            (later(2), "b2"),
        ] {
            queue.push(place, item);
        }
        let shown: Vec<&str> = queue.in_order().into_iter().copied().collect();
        assert_eq!(shown, drain(&mut queue));
    }

    #[test]
    fn clients_take_turns() {
        let mut queue = FairQueue::default();
        for job in ["a1", "a2", "a3"] {
            queue.push(Place::client(Some(1)), job);
        }
        queue.push(Place::client(Some(2)), "b1");
        queue.push(Place::client(None), "c1");
        assert_eq!(drain(&mut queue), ["a1", "b1", "c1", "a2", "a3"]);
        assert!(queue.is_empty());
    }

    #[test]
    fn a_more_urgent_job_goes_first() {
        let mut queue = FairQueue::default();
        let at = |priority| Place {
            client: None,
            priority,
        };
        queue.push(at(2), "partial");
        queue.push(at(1), "request");
        queue.push(at(0), "final");
        queue.push(at(1), "request 2");
        assert_eq!(
            drain(&mut queue),
            ["final", "request", "request 2", "partial"]
        );
    }
}
