//! The saga log: sagas and their node events.

use super::DataStore;
use crate::cached::CacheByText;
use crate::error::public_error_from_diesel;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use halyard_common::ids::{GenericUuid, NexusKind, NexusUuid, SagaKind, SagaUuid};
use halyard_common::{Error, Generation};
use halyard_db_model::schema::{saga, saga_node_event};
use halyard_db_model::{DbEnum, DbGeneration, DbTypedUuid, Saga, SagaNodeEvent, SagaState};

/// What became of a batch of saga events: all written (or already there), except those of
/// the sagas in `refused`, whose writer no longer owns them (another Nexus adopted them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventsWritten {
    pub refused: Vec<SagaUuid>,
}

impl DataStore {
    /// Records a new saga. Recording the same saga twice is a no-op.
    pub async fn saga_create(&self, new: &Saga) -> Result<(), Error> {
        let conn = &mut *self.connection().await?;
        diesel::insert_into(saga::table)
            .values(new)
            .on_conflict(saga::id)
            .do_nothing()
            .cached_by_text()
            .execute(conn)
            .await
            .map_err(public_error_from_diesel)?;
        Ok(())
    }

    /// Appends an event to a saga's log (see [`DataStore::saga_record_events`]).
    pub async fn saga_record_event(&self, event: &SagaNodeEvent) -> Result<EventsWritten, Error> {
        self.saga_record_events(&[event]).await
    }

    /// Appends several events (of any sagas) to the saga log in one statement, so one commit.
    ///
    /// An event is written only if its writer (`creator`, `adopt_generation`) still owns the
    /// saga: the saga's row is read `FOR SHARE`, so an adoption either commits first (and the
    /// event is refused) or waits for this write (and the adopter, which reads the log after
    /// its adoption commits, sees the event). An event already recorded (the key is saga, node
    /// and event type) is left alone, so a replayed action can record its events again. The
    /// answer names the sagas whose events were refused because their writer no longer owns
    /// them.
    pub async fn saga_record_events(
        &self,
        events: &[&SagaNodeEvent],
    ) -> Result<EventsWritten, Error> {
        use diesel::sql_types::{Array, Int8, Nullable, Text, Timestamptz, Uuid};
        if events.is_empty() {
            return Ok(EventsWritten::default());
        }
        let conn = &mut *self.connection().await?;
        // One statement for any number of events: the events as parallel arrays, unnested.
        let written = diesel::sql_query(
            "INSERT INTO saga_node_event \
               (saga_id, node_id, event_type, data, event_time, creator, adopt_generation) \
             SELECT e.saga_id, e.node_id, e.event_type, e.data::JSONB, e.event_time, e.creator, \
                    e.adopt_generation \
             FROM unnest($1::UUID[], $2::INT8[], $3::TEXT[], $4::TEXT[], $5::TIMESTAMPTZ[], \
                         $6::UUID[], $7::INT8[]) \
               AS e (saga_id, node_id, event_type, data, event_time, creator, adopt_generation) \
             JOIN saga s ON s.id = e.saga_id AND s.current_sec = e.creator \
                        AND s.adopt_generation = e.adopt_generation \
             FOR SHARE OF s \
             ON CONFLICT (saga_id, node_id, event_type) DO NOTHING",
        )
        .bind::<Array<Uuid>, _>(events.iter().map(|e| e.saga_id).collect::<Vec<_>>())
        .bind::<Array<Int8>, _>(events.iter().map(|e| e.node_id).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(events.iter().map(|e| &e.event_type).collect::<Vec<_>>())
        // As text, cast in the statement: CockroachDB has no arrays of JSONB.
        .bind::<Array<Nullable<Text>>, _>(
            events
                .iter()
                .map(|e| e.data.as_ref().map(serde_json::Value::to_string))
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Timestamptz>, _>(events.iter().map(|e| e.event_time).collect::<Vec<_>>())
        .bind::<Array<Uuid>, _>(events.iter().map(|e| e.creator).collect::<Vec<_>>())
        .bind::<Array<Int8>, _>(
            events
                .iter()
                .map(|e| e.adopt_generation)
                .collect::<Vec<_>>(),
        )
        .cached_by_text()
        .execute(conn)
        .await
        .map_err(public_error_from_diesel)?;
        if written == events.len() {
            return Ok(EventsWritten::default());
        }
        // Some were not written: already there, or refused. Which sagas are no longer the
        // writers'?
        let mut refused = Vec::new();
        for event in events {
            let owner: Option<(DbTypedUuid<NexusKind>, DbGeneration)> = saga::table
                .filter(saga::id.eq(event.saga_id))
                .select((saga::current_sec, saga::adopt_generation))
                .first(conn)
                .await
                .optional()
                .map_err(public_error_from_diesel)?;
            let owned = owner.is_some_and(|(sec, generation)| {
                sec == event.creator && generation == event.adopt_generation
            });
            if !owned && !refused.contains(&event.saga_id.0) {
                refused.push(event.saga_id.0);
            }
        }
        Ok(EventsWritten { refused })
    }

    /// Updates a saga's cached state, only while `sec` owns it at `generation`. Returns
    /// whether it applied (not: the saga was adopted by another).
    pub async fn saga_update_state(
        &self,
        id: SagaUuid,
        state: SagaState,
        sec: NexusUuid,
        generation: Generation,
    ) -> Result<bool, Error> {
        let conn = &mut *self.connection().await?;
        let updated = diesel::update(saga::table)
            .filter(saga::id.eq(DbTypedUuid(id)))
            .filter(saga::current_sec.eq(DbTypedUuid(sec)))
            .filter(saga::adopt_generation.eq(DbGeneration(generation)))
            .set(saga::saga_state.eq(DbEnum(state)))
            .cached_by_text()
            .execute(conn)
            .await
            .map_err(public_error_from_diesel)?;
        Ok(updated > 0)
    }

    pub async fn saga_fetch(&self, id: SagaUuid) -> Result<Saga, Error> {
        let conn = &mut *self.connection().await?;
        saga::table
            .filter(saga::id.eq(DbTypedUuid(id)))
            .select(Saga::as_select())
            .first(conn)
            .await
            .optional()
            .map_err(public_error_from_diesel)?
            .ok_or_else(|| {
                Error::not_found_by_id(halyard_common::ResourceType::Saga, id.into_untyped_uuid())
            })
    }

    /// The sagas `sec` owns that are not done, oldest first.
    pub async fn saga_list_unfinished(&self, sec: NexusUuid) -> Result<Vec<Saga>, Error> {
        let conn = &mut *self.connection().await?;
        saga::table
            .filter(saga::current_sec.eq(DbTypedUuid(sec)))
            .filter(saga::saga_state.ne(DbEnum(SagaState::Done)))
            .order((saga::time_created.asc(), saga::id.asc()))
            .select(Saga::as_select())
            .load(conn)
            .await
            .map_err(public_error_from_diesel)
    }

    /// Takes over, as `sec`, the unfinished sagas it owns: what a Nexus does as it starts,
    /// before it resumes them. Each one's adoption generation is bumped, so a process started
    /// earlier with the same id (still running: a mistake, or not yet dead) finds its writes
    /// to them refused. Returns them, as taken, oldest first.
    pub async fn saga_take_own(&self, sec: NexusUuid) -> Result<Vec<Saga>, Error> {
        let conn = &mut *self.connection().await?;
        let mut taken = diesel::update(saga::table)
            .filter(saga::current_sec.eq(DbTypedUuid(sec)))
            .filter(saga::saga_state.ne(DbEnum(SagaState::Done)))
            .set((
                saga::adopt_generation.eq(saga::adopt_generation + 1),
                saga::adopt_time.eq(diesel::dsl::now),
            ))
            .returning(Saga::as_returning())
            .get_results(conn)
            .await
            .map_err(public_error_from_diesel)?;
        taken.sort_by_key(|s| (s.time_created, s.id.0.into_untyped_uuid()));
        Ok(taken)
    }

    /// Adopts, as `adopter`, every unfinished saga whose owner has not heartbeated within
    /// `gone_after` (or never did: a saga of a Nexus from before heartbeats). One statement:
    /// two adopters racing for a saga cannot both take it (the second's update finds the row
    /// changed, owned by a live Nexus, and skips it). Each adopted saga's generation is bumped,
    /// which fences its old owner. Returns the adopted sagas, oldest first.
    pub async fn saga_adopt_from_gone(
        &self,
        adopter: NexusUuid,
        gone_after: std::time::Duration,
    ) -> Result<Vec<Saga>, Error> {
        let conn = &mut *self.connection().await?;
        let micros = i64::try_from(gone_after.as_micros()).unwrap_or(i64::MAX);
        let mut adopted: Vec<Saga> = diesel::sql_query(
            "UPDATE saga SET current_sec = $1, adopt_generation = adopt_generation + 1, \
               adopt_time = now() \
             WHERE saga_state != 'done' AND current_sec != $1 \
               AND current_sec NOT IN ( \
                 SELECT id FROM nexus \
                 WHERE time_heartbeat >= now() - $2::INT8 * INTERVAL '1 microsecond') \
             RETURNING id, creator, current_sec, name, dag, saga_state, adopt_generation, \
               time_created, adopt_time, resume_failure",
        )
        .bind::<diesel::sql_types::Uuid, _>(DbTypedUuid(adopter))
        .bind::<diesel::sql_types::Int8, _>(micros)
        .cached_by_text()
        .load(conn)
        .await
        .map_err(public_error_from_diesel)?;
        adopted.sort_by_key(|s| (s.time_created, s.id.0.into_untyped_uuid()));
        Ok(adopted)
    }

    /// The owner and adoption generation of each of `ids` (those that exist).
    pub async fn saga_owners(
        &self,
        ids: &[SagaUuid],
    ) -> Result<Vec<(SagaUuid, NexusUuid, Generation)>, Error> {
        let conn = &mut *self.connection().await?;
        let ids: Vec<DbTypedUuid<SagaKind>> = ids.iter().copied().map(DbTypedUuid).collect();
        let rows: Vec<(DbTypedUuid<SagaKind>, DbTypedUuid<NexusKind>, DbGeneration)> = saga::table
            .filter(saga::id.eq_any(ids))
            .select((saga::id, saga::current_sec, saga::adopt_generation))
            .load(conn)
            .await
            .map_err(public_error_from_diesel)?;
        Ok(rows
            .into_iter()
            .map(|(id, sec, generation)| (id.0, sec.0, generation.0))
            .collect())
    }

    /// Records why saga `id` could not be resumed (it stays unfinished, and is reported), or,
    /// with `None`, that it was resumed after all.
    pub async fn saga_set_resume_failure(
        &self,
        id: SagaUuid,
        why: Option<&str>,
    ) -> Result<(), Error> {
        let conn = &mut *self.connection().await?;
        diesel::update(saga::table)
            .filter(saga::id.eq(DbTypedUuid(id)))
            .set(saga::resume_failure.eq(why))
            .cached_by_text()
            .execute(conn)
            .await
            .map_err(public_error_from_diesel)?;
        Ok(())
    }

    /// How many unfinished sagas could not be resumed (for metrics).
    pub async fn saga_count_unresumable(&self) -> Result<u64, Error> {
        let conn = &mut *self.connection().await?;
        let count: i64 = saga::table
            .filter(saga::saga_state.ne(DbEnum(SagaState::Done)))
            .filter(saga::resume_failure.is_not_null())
            .count()
            .get_result(conn)
            .await
            .map_err(public_error_from_diesel)?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Every saga (only unfinished ones unless `include_done`), oldest first.
    pub async fn saga_list(&self, include_done: bool) -> Result<Vec<Saga>, Error> {
        let conn = &mut *self.connection().await?;
        let mut query = saga::table.select(Saga::as_select()).into_boxed();
        if !include_done {
            query = query.filter(saga::saga_state.ne(DbEnum(SagaState::Done)));
        }
        query
            .order((saga::time_created.asc(), saga::id.asc()))
            .load(conn)
            .await
            .map_err(public_error_from_diesel)
    }

    /// A saga's whole log, in the order it was written.
    pub async fn saga_node_events(&self, id: SagaUuid) -> Result<Vec<SagaNodeEvent>, Error> {
        let conn = &mut *self.connection().await?;
        saga_node_event::table
            .filter(saga_node_event::saga_id.eq(DbTypedUuid(id)))
            .order((
                saga_node_event::event_time.asc(),
                saga_node_event::node_id.asc(),
            ))
            .select(SagaNodeEvent::as_select())
            .load(conn)
            .await
            .map_err(public_error_from_diesel)
    }

    /// The sagas an undo failed in (stuck: done, but only partly undone), oldest first.
    pub async fn saga_list_stuck(&self) -> Result<Vec<Saga>, Error> {
        let conn = &mut *self.connection().await?;
        let stuck = saga_node_event::table
            .filter(saga_node_event::event_type.eq("undo_failed"))
            .select(saga_node_event::saga_id);
        saga::table
            .filter(saga::id.eq_any(stuck))
            .order((saga::time_created.asc(), saga::id.asc()))
            .select(Saga::as_select())
            .load(conn)
            .await
            .map_err(public_error_from_diesel)
    }

    /// How many sagas are stuck (an undo failed), without loading them: what a metrics
    /// scrape needs.
    pub async fn saga_count_stuck(&self) -> Result<u64, Error> {
        let conn = &mut *self.connection().await?;
        let stuck: i64 = saga_node_event::table
            .filter(saga_node_event::event_type.eq("undo_failed"))
            .select(diesel::dsl::count(saga_node_event::saga_id).aggregate_distinct())
            .get_result(conn)
            .await
            .map_err(public_error_from_diesel)?;
        Ok(u64::try_from(stuck).unwrap_or(0))
    }

    /// The logs of several sagas in one query (for listings), each in the order it was
    /// written.
    pub async fn saga_node_events_for(
        &self,
        ids: &[SagaUuid],
    ) -> Result<Vec<SagaNodeEvent>, Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let conn = &mut *self.connection().await?;
        let ids: Vec<DbTypedUuid<SagaKind>> = ids.iter().copied().map(DbTypedUuid).collect();
        saga_node_event::table
            .filter(saga_node_event::saga_id.eq_any(ids))
            .order((
                saga_node_event::saga_id.asc(),
                saga_node_event::event_time.asc(),
                saga_node_event::node_id.asc(),
            ))
            .select(SagaNodeEvent::as_select())
            .load(conn)
            .await
            .map_err(public_error_from_diesel)
    }
}
