// Package bolt is the default implementation of store.Store, on one bbolt
// file. All writes of many records are one transaction; results arrive in
// group commits (see controlplane/ingest), so one fsync covers many results.
//
// Layout: schema.go declares every bucket and key; records.go the binary
// records of the hot path; results_log.go how results are stored (an
// append-only log, check states in memory with checkpoints);
// remediation.go incidents and tasks.
package bolt

import (
	"errors"
	"fmt"
	"time"

	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"tend.dev/tend/controlplane/store"
)

// ErrLocked is returned by Open when another process holds the file.
var ErrLocked = errors.New("data dir locked by another process")

// Defaults for Options.
const (
	DefaultHistoryPerCheck    = 100
	DefaultLockTimeout        = time.Second
	DefaultCheckpointInterval = 5 * time.Second
)

// Options tune the store. The zero value is the production setting.
type Options struct {
	// HistoryPerCheck bounds the results kept per (agent, check): a check's
	// history is its last HistoryPerCheck results. Default 100.
	HistoryPerCheck int
	// CheckpointInterval is how long a check's state may change in memory
	// (and in the results log, which Open replays) before its check_state
	// record is rewritten. Default 5s.
	CheckpointInterval time.Duration
	// LockTimeout is how long Open waits for the file lock held by another
	// process before failing with ErrLocked. Default 1s.
	LockTimeout time.Duration
	// InitialMmapSize, in bytes, avoids remapping (which waits for readers)
	// while the file grows. Default 0: bbolt's own growth.
	InitialMmapSize int
	// NoSync skips fsync. Only for tests and benchmarks that do not care
	// about durability: a crash may lose or corrupt the store.
	NoSync bool
}

func (o Options) withDefaults() Options {
	if o.HistoryPerCheck <= 0 {
		o.HistoryPerCheck = DefaultHistoryPerCheck
	}
	if o.LockTimeout <= 0 {
		o.LockTimeout = DefaultLockTimeout
	}
	if o.CheckpointInterval <= 0 {
		o.CheckpointInterval = DefaultCheckpointInterval
	}
	return o
}

// Store is a store.Store on a bbolt file.
type Store struct {
	db  *bbolt.DB
	now func() time.Time
	res resultsState
}

var _ store.Store = (*Store)(nil)

// Open opens or creates the store at path. A new file is initialised at
// SchemaVersion; an older one is upgraded; a newer one is refused
// (ErrSchemaTooNew). If another process has the file open, Open fails with
// ErrLocked after opts.LockTimeout.
func Open(path string, opts Options) (*Store, error) {
	opts = opts.withDefaults()
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{
		Timeout:         opts.LockTimeout,
		NoFreelistSync:  true,
		FreelistType:    bbolt.FreelistMapType,
		NoSync:          opts.NoSync,
		InitialMmapSize: opts.InitialMmapSize,
	})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("open store %s: %w (waited %s for its lock): stop the other tend-controlplane or use another --data-dir",
			path, ErrLocked, opts.LockTimeout)
	}
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	if err := db.Update(func(tx *bbolt.Tx) error {
		_, err := migrate(tx, SchemaVersion, upgrades)
		return err
	}); err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	s := &Store{db: db, now: time.Now}
	s.res.historyPerCheck = uint64(opts.HistoryPerCheck)
	s.res.logSlack = uint64(opts.HistoryPerCheck)/4 + 16
	s.res.checkpointEvery = opts.CheckpointInterval
	if err := s.loadResults(); err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: load check states: %w", path, err)
	}
	return s, nil
}

// Close writes the check states that changed since their last checkpoint
// and closes the file. Transactions in progress finish first.
func (s *Store) Close() error {
	err := s.flushResults()
	return errors.Join(err, s.db.Close())
}

// Path is the file the store is in.
func (s *Store) Path() string {
	return s.db.Path()
}

// SchemaVersion returns the version recorded in the store.
func (s *Store) SchemaVersion() (uint64, error) {
	var v uint64
	err := s.db.View(func(tx *bbolt.Tx) (err error) {
		v, err = schemaVersion(tx)
		return err
	})
	return v, err
}

// Verify checks the whole file: bbolt's page consistency (tx.Check), every
// bucket present, every record decodable, that each check's history holds
// as many results as its state says, and that the incident and task
// indexes hold exactly what the records say (see verifyRemediation). It
// reads everything, so it is for tests, tools and startup after a crash,
// not for the hot path.
func (s *Store) Verify() error {
	s.res.commitMu.Lock()
	defer s.res.commitMu.Unlock()
	s.res.mu.RLock()
	defer s.res.mu.RUnlock()
	return s.db.View(func(tx *bbolt.Tx) error {
		var errs []error
		for err := range tx.Check() {
			errs = append(errs, err)
		}
		if len(errs) > 0 {
			return fmt.Errorf("bbolt consistency check of %s: %w", s.db.Path(), errors.Join(errs...))
		}
		for _, b := range allBuckets {
			if tx.Bucket(b.name) == nil {
				errs = append(errs, fmt.Errorf("bucket %q missing", b.name))
			}
		}
		if len(errs) > 0 {
			return errors.Join(errs...)
		}
		t := txn{tx}
		if v, err := schemaVersion(tx); err != nil || v != SchemaVersion {
			errs = append(errs, fmt.Errorf("schema version %d (%v), want %d", v, err, SchemaVersion))
		}
		errs = append(errs, t.forEachAgent(func(store.Agent) error { return nil }))
		errs = append(errs, t.forEachPolicy(func(store.Policy) error { return nil }))
		errs = append(errs, t.bucket(bucketAgentCounters).ForEach(func(k, v []byte) error {
			if _, err := decodeCounters(v); err != nil {
				return fmt.Errorf("agent %q: %w", k, err)
			}
			return nil
		}))
		errs = append(errs, s.verifyResults(t)...)
		errs = append(errs, t.verifyRemediation()...)
		return errors.Join(errs...)
	})
}

func (s *Store) view(fn func(t txn) error) error {
	return s.db.View(func(tx *bbolt.Tx) error { return fn(txn{tx}) })
}

func (s *Store) update(fn func(t txn) error) error {
	return s.db.Update(func(tx *bbolt.Tx) error { return fn(txn{tx}) })
}
