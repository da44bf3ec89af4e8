//! The saga log: sagas and their node events.

use super::DataStore;
use crate::cached::CacheByText;
use crate::error::public_error_from_diesel;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use halyard_common::Error;
use halyard_common::ids::{GenericUuid, NexusUuid, SagaKind, SagaUuid};
use halyard_db_model::schema::{saga, saga_node_event};
use halyard_db_model::{DbEnum, DbTypedUuid, Saga, SagaNodeEvent, SagaState};

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

    /// Appends an event to a saga's log. Recording the same event twice is a no-op (the key
    /// is saga, node and event type), so a replayed action can record its events again.
    pub async fn saga_record_event(&self, event: &SagaNodeEvent) -> Result<(), Error> {
        self.saga_record_events(&[event]).await
    }

    /// Appends several events (of any sagas) to the saga log in one statement, so one commit.
    /// As with [`DataStore::saga_record_event`], an event already recorded is left alone.
    pub async fn saga_record_events(&self, events: &[&SagaNodeEvent]) -> Result<(), Error> {
        if events.is_empty() {
            return Ok(());
        }
        // Every column bound (a missing `data` as NULL rather than DEFAULT), so the statement's
        // text depends on the number of events alone and each size is prepared once.
        let rows: Vec<_> = events
            .iter()
            .map(|e| {
                (
                    saga_node_event::saga_id.eq(e.saga_id),
                    saga_node_event::node_id.eq(e.node_id),
                    saga_node_event::event_type.eq(&e.event_type),
                    saga_node_event::data.eq(&e.data),
                    saga_node_event::event_time.eq(e.event_time),
                    saga_node_event::creator.eq(e.creator),
                )
            })
            .collect();
        let conn = &mut *self.connection().await?;
        diesel::insert_into(saga_node_event::table)
            .values(rows)
            .on_conflict((
                saga_node_event::saga_id,
                saga_node_event::node_id,
                saga_node_event::event_type,
            ))
            .do_nothing()
            .cached_by_text()
            .execute(conn)
            .await
            .map_err(public_error_from_diesel)?;
        Ok(())
    }

    /// Updates a saga's cached state, only while `sec` owns it. Returns whether it applied.
    pub async fn saga_update_state(
        &self,
        id: SagaUuid,
        state: SagaState,
        sec: NexusUuid,
    ) -> Result<bool, Error> {
        let conn = &mut *self.connection().await?;
        let updated = diesel::update(saga::table)
            .filter(saga::id.eq(DbTypedUuid(id)))
            .filter(saga::current_sec.eq(DbTypedUuid(sec)))
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

    /// The sagas `sec` owns that are not done: what it must resume when it starts.
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
