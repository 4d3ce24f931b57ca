//! The one consume → effect → settle loop: the router and every
//! subscription's sink are [`Stage`]s run by [`run`].
//!
//! The engine owns what makes "an effect happens before its offset moves"
//! true, once for every stage: it collects batches ([`next_batch`], fenced
//! against rebalances), hands each to the stage, keeps up to
//! [`Options::in_flight`] started batches whose effects are still being
//! acknowledged, settles them **oldest first**, and only then stores each
//! settled record's offset (or, for a stage whose offsets travel with its
//! effect, stores nothing). When the consumer is idle it settles what is in
//! flight; when the stop comes it stops reading, settles every batch in
//! flight and commits. A stage only says what it did with a batch
//! ([`Settled`]); it never touches offsets.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use super::{blocking, next_batch, while_reading_ahead, Revocations};

/// A consumer context that records revocations, so the engine can fence
/// its batches ([`Revocations`]).
pub trait Fenced: ConsumerContext + 'static {
    /// The consumer's revocations.
    fn revocations(&self) -> &Revocations;
}

/// What every stage's consumer context does before a rebalance (call it
/// from `pre_rebalance`): records a revocation for the fence, and commits
/// the offsets stored so far, synchronously, before the partitions go — the
/// next owner starts there. Left to the periodic auto-commit, it would
/// start up to a second behind and process that second again (measured in
/// RELIABILITY.md's rebalance storm).
///
/// `commit` is the stage's [`Options::store_offsets`]: a stage whose offsets
/// travel with its effect (a transaction, a table) commits nothing here —
/// whatever librdkafka might have stored for it.
pub fn before_rebalance<C: Fenced>(
    consumer: &rdkafka::consumer::BaseConsumer<C>,
    rebalance: &rdkafka::consumer::Rebalance<'_>,
    commit: bool,
) {
    consumer.context().revocations().on_rebalance(rebalance);
    if !commit {
        return;
    }
    if let rdkafka::consumer::Rebalance::Revoke(_) = rebalance {
        // A round trip to the coordinator, inside the stage's poll: off
        // the async worker.
        match blocking(|| consumer.commit_consumer_state(CommitMode::Sync)) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => {
                tracing::warn!(message = "Commit before a rebalance failed; the next owner repeats what was done since the last commit.", %error);
            }
        }
    }
}

/// What a stage did with a batch it started.
#[derive(Debug)]
pub enum Settled<E> {
    /// Records `[..n]` of the batch are done (their effect acknowledged, or
    /// dead-lettered): their offsets move. The rest come again after a
    /// restart.
    Done(usize),
    /// Records `[..done]` are done, then the stage stops for `why`.
    Stop {
        /// Records done before the stop.
        done: usize,
        /// Why the stage stops.
        why: E,
    },
    /// Nothing of the batch took effect: the engine seeks each of its
    /// partitions back to the batch's first record, to read it again — and
    /// with it everything after it: batches started after it are settled
    /// (their effects awaited) but move no offset, and are read again too;
    /// a batch read ahead is dropped and read again.
    Rewind,
}

/// Prepares a batch read ahead (decodes it, say) while the batch before it
/// is still being delivered ([`Stage::read_ahead`]).
pub trait Prepare<R>: Send {
    /// What preparing gives, handed to [`Stage::start`] with the batch.
    type Prepared: Send;
    /// Prepares `records`, giving them back with what was prepared.
    fn prepare(self, records: Vec<R>) -> impl Future<Output = (Vec<R>, Self::Prepared)> + Send;
}

/// The preparer of a stage that never reads ahead.
#[derive(Debug)]
pub struct NoReadAhead;

impl<R: Send> Prepare<R> for NoReadAhead {
    type Prepared = ();
    async fn prepare(self, records: Vec<R>) -> (Vec<R>, ()) {
        (records, ())
    }
}

/// A consuming stage: the router, or one subscription's sink.
pub trait Stage: Send {
    /// What the stage keeps of a consumed record (made by the `keep`
    /// function given to [`run`]).
    type Record: Send;
    /// A batch whose effects were started; [`Stage::settle`] waits for them.
    type Started: Send;
    /// Why the stage stops before the process does.
    type Stop: Send;
    /// Prepares what is read ahead ([`NoReadAhead`] when never).
    type Preparer: Prepare<Self::Record>;

    /// The preparer for the next batch, when the stage reads its next batch
    /// while the current one is started (only a stage whose consumer is
    /// *assigned* its partitions may: see [`while_reading_ahead`]).
    fn read_ahead(&self) -> Option<Self::Preparer> {
        None
    }

    /// Starts a batch's effects (with what was prepared of it, when it was
    /// read ahead). An error stops the stage: nothing of this batch moves.
    fn start(
        &mut self,
        records: Vec<Self::Record>,
        prepared: Option<<Self::Preparer as Prepare<Self::Record>>::Prepared>,
    ) -> impl Future<Output = Result<Self::Started, Self::Stop>> + Send;

    /// Whether a started batch already says the stage stops (its effects
    /// stopped part way): the engine then reads nothing more and settles
    /// what is in flight, this batch last, instead of starting the next
    /// batch first. Default: no.
    fn stops(&self, _started: &Self::Started) -> bool {
        false
    }

    /// Waits for a started batch's effects and says how far they got.
    fn settle(
        &mut self,
        started: Self::Started,
    ) -> impl Future<Output = Settled<Self::Stop>> + Send;

    /// Called when a poll with no batch in flight brought nothing (after
    /// [`Options::idle_wait`]): housekeeping.
    fn idle(&mut self) -> impl Future<Output = Result<(), Self::Stop>> + Send {
        async { Ok(()) }
    }
}

/// How the engine runs a stage.
#[derive(Debug, Clone)]
pub struct Options {
    /// Records per batch at most.
    pub max_batch: usize,
    /// How long a batch waits to fill after its first record.
    pub linger: Duration,
    /// How long to wait for a first record before calling [`Stage::idle`]
    /// (`None`: until one comes).
    pub idle_wait: Option<Duration>,
    /// Batches started and not yet settled while the next one is read
    /// (0: each batch is settled before the next is read — a group member
    /// whose effect takes long must not poll meanwhile, see
    /// [`while_reading_ahead`]).
    pub in_flight: usize,
    /// Whether settled offsets are stored on the consumer (committed by its
    /// auto-commit and when the engine stops). Off for a stage whose
    /// offsets travel with its effect (a transaction, a table).
    pub store_offsets: bool,
}

/// With batches in flight, a poll waits this long before settling them
/// (so their offsets are stored at low rates too).
pub const SETTLE_WHEN_IDLE: Duration = Duration::from_millis(20);

/// Where a batch's records were read: enough to store its offsets or read
/// it again, without holding the records.
#[derive(Debug, Default)]
struct Positions {
    topics: Vec<String>,
    /// Topic index, partition and offset of each record, in batch order.
    at: Vec<(usize, i32, i64)>,
}

impl Positions {
    fn push(&mut self, m: &BorrowedMessage<'_>) {
        self.push_at(m.topic(), m.partition(), m.offset());
    }

    fn push_at(&mut self, topic: &str, partition: i32, offset: i64) {
        let index = match self.at.last() {
            Some(&(i, _, _)) if self.topics[i] == topic => i,
            _ => match self.topics.iter().position(|t| t == topic) {
                Some(i) => i,
                None => {
                    self.topics.push(topic.to_owned());
                    self.topics.len() - 1
                }
            },
        };
        self.at.push((index, partition, offset));
    }

    /// Adds `other`'s records after these.
    fn extend(&mut self, other: &Positions) {
        for &(t, p, o) in &other.at {
            self.push_at(&other.topics[t], p, o);
        }
    }

    /// Per partition of records `[..n]`, the offset after the last, or
    /// (`first`) the first offset.
    fn offsets(&self, n: usize, first: bool) -> TopicPartitionList {
        let mut per: HashMap<(usize, i32), i64> = HashMap::new();
        for &(t, p, o) in &self.at[..n.min(self.at.len())] {
            let e = per
                .entry((t, p))
                .or_insert(if first { i64::MAX } else { i64::MIN });
            *e = if first { (*e).min(o) } else { (*e).max(o + 1) };
        }
        let mut tpl = TopicPartitionList::new();
        for ((t, p), o) in per {
            let _ = tpl.add_partition_offset(&self.topics[t], p, Offset::Offset(o));
        }
        tpl
    }
}

/// Runs `stage` on `consumer` until `shutdown` completes (then `None`,
/// after settling every batch in flight and committing) or the stage stops
/// (`Some`, after storing what it settled).
pub async fn run<'c, C, S>(
    consumer: &'c StreamConsumer<C>,
    stage: &mut S,
    keep: fn(BorrowedMessage<'c>) -> S::Record,
    options: &Options,
    shutdown: impl Future<Output = ()>,
) -> Option<S::Stop>
where
    C: Fenced,
    S: Stage,
{
    tokio::pin!(shutdown);
    let fence = Some(consumer.context().revocations());
    let mut in_flight: VecDeque<(Positions, S::Started)> = VecDeque::new();
    type Ahead<S> = (
        Positions,
        Vec<<S as Stage>::Record>,
        <<S as Stage>::Preparer as Prepare<<S as Stage>::Record>>::Prepared,
    );
    let mut ahead: Option<Ahead<S>> = None;
    let stop = 'run: loop {
        // A stop is seen between batches even while a backlog keeps the
        // next batch in hand (read ahead, never stored: dropped).
        if stopped(shutdown.as_mut()).await {
            break None;
        }
        let (positions, records, prepared) = match ahead.take() {
            Some((positions, records, prepared)) => (positions, records, Some(prepared)),
            None => {
                let wait = if in_flight.is_empty() {
                    options.idle_wait
                } else {
                    Some(SETTLE_WHEN_IDLE)
                };
                let mut positions = Positions::default();
                let keep = |m: BorrowedMessage<'c>| {
                    positions.push(&m);
                    keep(m)
                };
                let records = tokio::select! {
                    biased;
                    () = shutdown.as_mut() => break None,
                    b = next_batch(consumer, wait, options.max_batch, options.linger, fence, keep) => b,
                };
                (positions, records, None)
            }
        };
        if records.is_empty() {
            // A short wait with batches in flight only settles them; the
            // stage is idle after a wait of `idle_wait` with none.
            let settling = !in_flight.is_empty();
            while !in_flight.is_empty() {
                if let Some(why) =
                    settle_oldest(consumer, stage, options, &mut in_flight, &mut ahead).await
                {
                    break 'run Some(why);
                }
            }
            if !settling {
                if let Err(why) = stage.idle().await {
                    break Some(why);
                }
            }
            continue;
        }
        let started = match stage.read_ahead() {
            Some(preparer) => {
                let mut next = Positions::default();
                let keep = |m: BorrowedMessage<'c>| {
                    next.push(&m);
                    keep(m)
                };
                let (started, read) = while_reading_ahead(
                    stage.start(records, prepared),
                    consumer,
                    options.max_batch,
                    options.linger,
                    fence,
                    keep,
                    |records| preparer.prepare(records),
                )
                .await;
                if let Some((records, prepared)) = read {
                    ahead = Some((next, records, prepared));
                }
                started
            }
            None => stage.start(records, prepared).await,
        };
        match started {
            Ok(started) if stage.stops(&started) => {
                in_flight.push_back((positions, started));
                let mut first = None;
                while !in_flight.is_empty() && first.is_none() {
                    first =
                        settle_oldest(consumer, stage, options, &mut in_flight, &mut ahead).await;
                }
                if first.is_some() {
                    break first;
                }
            }
            Ok(started) => in_flight.push_back((positions, started)),
            Err(why) => {
                // The batches started before it are settled first (a stop
                // one of them says comes first).
                let mut first = None;
                while !in_flight.is_empty() && first.is_none() {
                    first =
                        settle_oldest(consumer, stage, options, &mut in_flight, &mut ahead).await;
                }
                break Some(first.unwrap_or(why));
            }
        }
        while in_flight.len() > options.in_flight {
            if let Some(why) =
                settle_oldest(consumer, stage, options, &mut in_flight, &mut ahead).await
            {
                break 'run Some(why);
            }
        }
    };
    // A stop: every batch in flight is settled first.
    let mut stop = stop;
    while !in_flight.is_empty() && stop.is_none() {
        stop = settle_oldest(consumer, stage, options, &mut in_flight, &mut ahead).await;
    }
    if options.store_offsets {
        commit(consumer);
    }
    stop
}

/// Whether `shutdown` has completed (polled once; it is not polled again
/// once it has).
async fn stopped(shutdown: std::pin::Pin<&mut impl Future<Output = ()>>) -> bool {
    let mut shutdown = shutdown;
    std::future::poll_fn(|cx| std::task::Poll::Ready(shutdown.as_mut().poll(cx).is_ready())).await
}

/// Settles the oldest batch in flight and moves the offsets of what it
/// did; `Some` when the stage stops.
///
/// A batch that says [`Settled::Rewind`] takes everything after it along:
/// no later offset may move before its records are done, so the later
/// batches in flight are settled (their effects awaited: at least once)
/// but store nothing, a batch read ahead is dropped, and each partition
/// of them all goes back to its earliest record among them.
async fn settle_oldest<C, S, R, P>(
    consumer: &StreamConsumer<C>,
    stage: &mut S,
    options: &Options,
    in_flight: &mut VecDeque<(Positions, S::Started)>,
    ahead: &mut Option<(Positions, R, P)>,
) -> Option<S::Stop>
where
    C: Fenced,
    S: Stage,
{
    let (positions, started) = in_flight.pop_front()?;
    let (done, stop) = match stage.settle(started).await {
        Settled::Done(n) => (n, None),
        Settled::Stop { done, why } => (done, Some(why)),
        Settled::Rewind => {
            let mut back = positions;
            let mut stop = None;
            while let Some((later, started)) = in_flight.pop_front() {
                if let Settled::Stop { why, .. } = stage.settle(started).await {
                    stop = stop.or(Some(why));
                }
                back.extend(&later);
            }
            if let Some((read, _, _)) = ahead.take() {
                back.extend(&read);
            }
            rewind(consumer, &back);
            return stop;
        }
    };
    if options.store_offsets && done > 0 {
        // Fails only for partitions revoked meanwhile: their next owner
        // processes those records again (nothing is lost).
        if let Err(error) = consumer.store_offsets(&positions.offsets(done, false)) {
            tracing::debug!(message = "Some offsets not stored (partitions revoked).", %error);
        }
    }
    stop
}

/// Seeks each partition of a batch back to its first record.
fn rewind<C: Fenced>(consumer: &StreamConsumer<C>, positions: &Positions) {
    let first = positions.offsets(positions.at.len(), true);
    for e in first.elements() {
        if let Err(error) = consumer.seek(
            e.topic(),
            e.partition(),
            e.offset(),
            Duration::from_secs(10),
        ) {
            tracing::warn!(message = "Rewind failed.", topic = e.topic(), partition = e.partition(), %error);
        }
    }
}

/// Commits the stored offsets (a stop: the next owner starts there).
fn commit<C: Fenced>(consumer: &StreamConsumer<C>) {
    match blocking(|| consumer.commit_consumer_state(CommitMode::Sync)) {
        // NoOffset: nothing was stored since the last commit.
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(error) => {
            tracing::warn!(message = "Final commit failed; what was done since the last commit is done again after a restart.", %error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Ctx(Revocations);
    impl rdkafka::ClientContext for Ctx {}
    impl ConsumerContext for Ctx {}
    impl Fenced for Ctx {
        fn revocations(&self) -> &Revocations {
            &self.0
        }
    }

    /// Settles what it is told per batch, and logs what it starts and settles.
    #[derive(Default)]
    struct Logged {
        started: Vec<Vec<i64>>,
        settled: Vec<i64>,
        /// What `settle` answers, per batch started (then `Done(all)`).
        answers: VecDeque<Settled<&'static str>>,
        /// Records started so far.
        count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
        /// First records of batches that say at their start that the
        /// stage stops ([`Stage::stops`]).
        stops_at: Vec<i64>,
    }

    impl Stage for Logged {
        type Record = i64;
        type Started = (i64, usize);
        type Stop = &'static str;
        type Preparer = NoReadAhead;

        async fn start(
            &mut self,
            records: Vec<i64>,
            _: Option<()>,
        ) -> Result<(i64, usize), &'static str> {
            self.started.push(records.clone());
            self.count
                .fetch_add(records.len(), std::sync::atomic::Ordering::Relaxed);
            Ok((records[0], records.len()))
        }

        fn stops(&self, &(first, _): &(i64, usize)) -> bool {
            self.stops_at.contains(&first)
        }

        async fn settle(&mut self, (first, n): (i64, usize)) -> Settled<&'static str> {
            self.settled.push(first);
            self.answers.pop_front().unwrap_or(Settled::Done(n))
        }
    }

    fn offset(m: BorrowedMessage<'_>) -> i64 {
        m.offset()
    }

    /// A mock cluster whose topic `t` holds `n` records, and a group
    /// consumer of it.
    async fn topic_of(
        n: usize,
    ) -> (
        rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
        StreamConsumer<Ctx>,
    ) {
        super::super::tests::mock_topic(n, Ctx::default()).await
    }

    /// Runs `stage` with `in_flight` until it stops by itself.
    async fn run_until_stopped(
        consumer: &StreamConsumer<Ctx>,
        stage: &mut Logged,
        in_flight: usize,
    ) -> Option<&'static str> {
        run(
            consumer,
            stage,
            offset,
            &options(in_flight),
            std::future::pending(),
        )
        .await
    }

    fn options(in_flight: usize) -> Options {
        Options {
            max_batch: 10,
            linger: Duration::from_millis(500),
            idle_wait: Some(Duration::from_millis(200)),
            in_flight,
            store_offsets: true,
        }
    }

    fn committed(consumer: &StreamConsumer<Ctx>) -> Option<i64> {
        let c = consumer
            .committed(Duration::from_secs(5))
            .expect("committed");
        match c.find_partition("t", 0)?.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        }
    }

    /// A stage whose first batch is done and whose second stops after 3
    /// records; the batches starting at `stops_at` say so at their start.
    fn done_then_stopped_after_3(stops_at: Vec<i64>) -> Logged {
        Logged {
            answers: [
                Settled::Done(10),
                Settled::Stop {
                    done: 3,
                    why: "stop",
                },
            ]
            .into(),
            stops_at,
            ..Logged::default()
        }
    }

    #[tokio::test]
    async fn batches_settle_oldest_first_and_a_stop_moves_only_what_was_done() {
        let (_mock, consumer) = topic_of(40).await;
        let mut stage = done_then_stopped_after_3(Vec::new());
        let stopped = run_until_stopped(&consumer, &mut stage, 1).await;
        assert_eq!(stopped, Some("stop"));
        // One batch in flight while the next is read: the second batch is
        // settled after the third started, and oldest first.
        assert_eq!(
            stage.started,
            [
                (0..10).collect::<Vec<_>>(),
                (10..20).collect(),
                (20..30).collect()
            ]
        );
        assert_eq!(stage.settled, [0, 10]);
        // Records 10..13 were done; the third batch, started but never
        // settled, does not move its offsets.
        assert_eq!(committed(&consumer), Some(13));
    }

    #[tokio::test]
    async fn a_batch_that_stops_at_its_start_is_settled_before_another_is_started() {
        let (_mock, consumer) = topic_of(40).await;
        // As above, but the second batch says at its start that the stage
        // stops (a sink whose destination failed part way): nothing after
        // it may be started — delivered — before it is settled.
        let mut stage = done_then_stopped_after_3(vec![10]);
        let stopped = run_until_stopped(&consumer, &mut stage, 1).await;
        assert_eq!(stopped, Some("stop"));
        assert_eq!(
            stage.started,
            [(0..10).collect::<Vec<_>>(), (10..20).collect()]
        );
        assert_eq!(stage.settled, [0, 10]);
        assert_eq!(committed(&consumer), Some(13));
    }

    #[tokio::test]
    async fn a_rewound_batch_takes_every_later_batch_back_with_it_and_no_later_offset_moves() {
        let (_mock, consumer) = topic_of(30).await;
        // Batch 0..10 rewinds while 10..20 and 20..30 are in flight (and
        // say they are done); then, read again, 0..10 stops the stage
        // having done nothing.
        let mut stage = Logged {
            answers: [
                Settled::Rewind,
                Settled::Done(10),
                Settled::Done(10),
                Settled::Stop {
                    done: 0,
                    why: "stop",
                },
            ]
            .into(),
            ..Logged::default()
        };
        let stopped = run_until_stopped(&consumer, &mut stage, 4).await;
        assert_eq!(stopped, Some("stop"));
        assert_eq!(stage.settled, [0, 10, 20, 0]);
        // Everything after the rewound batch was read again from it.
        assert_eq!(
            stage.started.concat()[..40],
            (0..30).chain(0..10).collect::<Vec<_>>()
        );
        // The later batches' offsets never moved: nothing was committed.
        assert_eq!(committed(&consumer), None);
    }

    #[tokio::test]
    async fn a_shutdown_settles_what_is_in_flight_and_commits_it() {
        let (_mock, consumer) = topic_of(30).await;
        let mut stage = Logged::default();
        let count = stage.count.clone();
        // The stop comes as soon as the third batch was started: seen at
        // once, with three batches in flight and none settled.
        let stopping = async move {
            while count.load(std::sync::atomic::Ordering::Relaxed) < 30 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        let stopped = run(&consumer, &mut stage, offset, &options(4), stopping).await;
        assert_eq!(stopped, None);
        assert_eq!(stage.started.len(), 3);
        assert_eq!(stage.settled, [0, 10, 20]);
        assert_eq!(committed(&consumer), Some(30));
    }
}
