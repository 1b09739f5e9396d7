package state

import (
	"encoding/binary"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// Every bucket of agent.db is declared here and nowhere else.
var (
	// bucketMeta holds the schema version and the caller's small key/value
	// entries (identity, agent id, last check assignment, ...).
	bucketMeta = []byte("meta")
	// bucketOutbox holds results waiting for the control plane's ack, keyed
	// by their sequence number (8 bytes, big endian), value: a marshalled
	// agentv1.CheckResult with Seq set.
	bucketOutbox = []byte("outbox")
	// bucketOutboxMeta holds the outbox counters (next_seq, pending,
	// dropped_total).
	bucketOutboxMeta = []byte("outbox_meta")
	// bucketTasks holds the task counters: the sequence high-water mark
	// (seq_high_water), the update outbox's next key, pending count and
	// dropped total, and the task that was running (in_flight), if any.
	bucketTasks = []byte("tasks")
	// bucketTaskUpdates holds task updates waiting for the control plane's
	// TaskUpdateAck, keyed by an 8-byte big-endian counter in the order
	// they were written; value: a marshalled agentv1.TaskUpdate.
	bucketTaskUpdates = []byte("task_updates")
	// bucketTaskUpdateIndex finds a task's updates: key = 2-byte length of
	// the task id, the task id, the 8-byte update key; value empty.
	bucketTaskUpdateIndex = []byte("task_update_index")
	// bucketAutonomyRuns holds the reports of remediations run under a
	// standing order, keyed by run id, until the control plane acknowledges
	// them (agentv1.AutonomousRun, protobuf).
	bucketAutonomyRuns = []byte("autonomy_runs")
)

// The task and autonomy buckets were added without a schema version change:
// they are created in any file that lacks them (see migrate), and a
// tend-agent that does not know them ignores them.

var allBuckets = [][]byte{bucketMeta, bucketOutbox, bucketOutboxMeta, bucketTasks, bucketTaskUpdates, bucketTaskUpdateIndex, bucketAutonomyRuns}

// Keys in bucketMeta that belong to this package.
const (
	keySchemaVersion   = "schema_version"
	keyCheckAssignment = "check_assignment"
)

// Keys in bucketOutboxMeta.
var (
	keyNextSeq      = []byte("next_seq")
	keyPending      = []byte("pending")
	keyDroppedTotal = []byte("dropped_total")
)

// Keys in bucketTasks.
var (
	keyTaskHighWater  = []byte("seq_high_water")
	keyNextUpdate     = []byte("next_update")
	keyUpdatesPending = []byte("updates_pending")
	keyUpdatesDropped = []byte("updates_dropped_total")
	keyTaskInFlight   = []byte("in_flight")
)

// SchemaVersion is the version of agent.db's layout this build writes.
const SchemaVersion uint64 = 1

// migrations[v] upgrades a database from schema version v to v+1. Version 0
// is a new, empty file.
var migrations = map[uint64]func(tx *bolt.Tx) error{
	0: func(tx *bolt.Tx) error { return nil }, // buckets are created by migrate
}

// migrate brings the schema up to SchemaVersion, or refuses a newer one
// without touching the file.
func migrate(tx *bolt.Tx, path string) error {
	var version uint64
	if b := tx.Bucket(bucketMeta); b != nil {
		if v := b.Get([]byte(keySchemaVersion)); v != nil {
			if len(v) != 8 {
				return fmt.Errorf("agent state %s: schema version record is %d bytes, want 8: the file is damaged; move it aside to start fresh (the agent will need a new join token)", path, len(v))
			}
			version = binary.BigEndian.Uint64(v)
		}
	}
	if version > SchemaVersion {
		return fmt.Errorf("agent state %s has schema version %d, this tend-agent understands up to %d: %w; run a tend-agent at least as new as the one that wrote it", path, version, SchemaVersion, ErrSchemaTooNew)
	}
	for _, name := range allBuckets {
		if _, err := tx.CreateBucketIfNotExists(name); err != nil {
			return fmt.Errorf("create bucket %q: %w", name, err)
		}
	}
	for ; version < SchemaVersion; version++ {
		m, ok := migrations[version]
		if !ok {
			return fmt.Errorf("agent state %s: no migration from schema version %d", path, version)
		}
		if err := m(tx); err != nil {
			return fmt.Errorf("agent state %s: migrate schema %d to %d: %w", path, version, version+1, err)
		}
	}
	return tx.Bucket(bucketMeta).Put([]byte(keySchemaVersion), u64(SchemaVersion))
}

func u64(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}

// getU64 reads an 8-byte big-endian counter; absent means 0.
func getU64(b *bolt.Bucket, key []byte) uint64 {
	v := b.Get(key)
	if len(v) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}
