// Package state is the agent's own database (DATA_DIR/agent.db, bbolt): the
// outbox of check results waiting for the control plane's ack, with their
// per-agent sequence numbers, and a small key/value store for the agent's
// meta data (identity, agent id, last check assignment).
//
// Results are written by group commit: concurrent Append calls share one
// write transaction (one fsync), and a single Append never waits for a timer.
package state

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Defaults for Options.
const (
	DefaultOutboxMax   = 100000
	DefaultLockTimeout = 5 * time.Second
	DefaultAckDelay    = 5 * time.Second
)

// maxResultsPerCommit bounds one group commit, so a burst of appends does not
// build an unbounded transaction.
const maxResultsPerCommit = 10000

var (
	// ErrInUse means another process holds the database's file lock.
	ErrInUse = errors.New("data dir in use by another tend-agent")
	// ErrSchemaTooNew means the database was written by a newer tend-agent.
	ErrSchemaTooNew = errors.New("agent state schema is newer than this tend-agent")
	// ErrClosed is returned by Append after Close.
	ErrClosed = errors.New("agent state is closed")
)

// Options tune Open. The zero value is valid.
type Options struct {
	// OutboxMax is the most results the outbox keeps (default 100000). When
	// it is full the oldest results are dropped and counted in the
	// persisted dropped total.
	OutboxMax int
	// LockTimeout is how long Open waits for the file lock (default 5s).
	LockTimeout time.Duration
	// AckDelay is how long Ack may defer deleting acknowledged results
	// (default 5s; negative: delete at once). A deferred deletion is
	// written by the next Append's transaction, or on its own when no
	// Append comes within AckDelay, or by Close: an agent whose checks
	// finish every few seconds writes no transaction (two fsyncs) for
	// its acks. The deletion takes effect in memory at once (Pending and
	// Stats skip the acknowledged results, OutboxMax does not count
	// them). A crash before it is written only means the results are
	// sent again, and the control plane skips a result at or below its
	// high-water mark of the agent (and acknowledges through it in
	// Welcome, which deletes them before anything is sent).
	AckDelay time.Duration
}

func (o Options) withDefaults() Options {
	if o.OutboxMax <= 0 {
		o.OutboxMax = DefaultOutboxMax
	}
	if o.LockTimeout <= 0 {
		o.LockTimeout = DefaultLockTimeout
	}
	if o.AckDelay == 0 {
		o.AckDelay = DefaultAckDelay
	}
	return o
}

// DB is the agent's state database. It is safe for concurrent use.
type DB struct {
	bolt *bolt.DB
	path string
	max  uint64

	// closeMu guards closed and sends on appendCh.
	closeMu  sync.RWMutex
	closed   bool
	appendCh chan *appendReq
	done     chan struct{} // closed when the committer has exited

	// Deferred acks (see Options.AckDelay): ackWant is the highest seq
	// acknowledged, ackDone the highest whose deletion is committed (both
	// under statsMu); ackCh tells the committer that ackWant moved.
	ackDelay time.Duration
	ackCh    chan struct{}
	ackWant  uint64
	ackDone  uint64

	// writeMu serialises the transactions that change the outbox, so the
	// cached stats are updated in commit order.
	writeMu sync.Mutex
	statsMu sync.Mutex
	stats   outboxStats

	// noTaskUpdates: the task update bucket is empty (set after every
	// transaction that writes it, see noteTaskUpdates).
	noTaskUpdates atomic.Bool

	commits  atomic.Uint64 // group commits made (for tests)
	inCommit atomic.Int64  // appends in the commit under way (for tests)
}

type outboxStats struct {
	pending, dropped, next uint64
}

// Open opens (creating if needed) the agent database at path. It fails with
// ErrInUse when another tend-agent holds the file, and with ErrSchemaTooNew
// when a newer tend-agent wrote it.
func Open(path string, opts Options) (*DB, error) {
	opts = opts.withDefaults()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("open agent state: create data dir: %w", err)
	}
	bdb, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: opts.LockTimeout})
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, fmt.Errorf("open agent state %s: %w (file lock not released within %s); stop the other tend-agent or give this one its own --data-dir", path, ErrInUse, opts.LockTimeout)
	}
	if err != nil {
		return nil, fmt.Errorf("open agent state %s: %w", path, err)
	}
	d := &DB{
		bolt:     bdb,
		path:     path,
		max:      uint64(opts.OutboxMax),
		appendCh: make(chan *appendReq, 256),
		done:     make(chan struct{}),
		ackDelay: opts.AckDelay,
		ackCh:    make(chan struct{}, 1),
	}
	var st outboxStats
	err = bdb.Update(func(tx *bolt.Tx) error {
		if err := migrate(tx, path); err != nil {
			return err
		}
		// A smaller OutboxMax than last time takes effect now.
		var err error
		if st, err = d.trim(tx); err != nil {
			return err
		}
		d.noteTaskUpdates(tx)
		return nil
	})
	if err != nil {
		_ = bdb.Close()
		return nil, err
	}
	d.stats = st
	go d.committer()
	return d, nil
}

// Path is the database file's path.
func (d *DB) Path() string { return d.path }

// Close waits for pending appends and deferred acks to commit and closes
// the file. Calling it
// again does nothing.
func (d *DB) Close() error {
	d.closeMu.Lock()
	if d.closed {
		d.closeMu.Unlock()
		return nil
	}
	d.closed = true
	close(d.appendCh)
	d.closeMu.Unlock()
	<-d.done
	if err := d.bolt.Close(); err != nil {
		return fmt.Errorf("close agent state %s: %w", d.path, err)
	}
	return nil
}

// Check runs bbolt's consistency check over the whole file.
func (d *DB) Check() error {
	return d.bolt.View(func(tx *bolt.Tx) error {
		var errs []error
		for err := range tx.Check() {
			errs = append(errs, err)
		}
		if len(errs) > 0 {
			return fmt.Errorf("agent state %s is inconsistent: %w", d.path, errors.Join(errs...))
		}
		return nil
	})
}
