package bolt

import (
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.etcd.io/bbolt"
)

func TestOpenInitialisesEmptyStore(t *testing.T) {
	s := testStore(t, Options{})
	v, err := s.SchemaVersion()
	require.NoError(t, err)
	require.Equal(t, SchemaVersion, v)
	require.NoError(t, s.db.View(func(tx *bbolt.Tx) error {
		for _, b := range allBuckets {
			require.NotNil(t, tx.Bucket(b.name), "bucket %s", b.name)
		}
		return nil
	}))
	require.NoError(t, s.Verify())
}

// rawDB writes a bbolt file by hand, the way an older or newer binary would
// have left it.
func rawDB(t *testing.T, fn func(tx *bbolt.Tx) error) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tend.db")
	db, err := bbolt.Open(path, 0o600, nil)
	require.NoError(t, err)
	require.NoError(t, db.Update(fn))
	require.NoError(t, db.Close())
	return path
}

func TestOpenRefusesNewerSchema(t *testing.T) {
	path := rawDB(t, func(tx *bbolt.Tx) error {
		meta, err := tx.CreateBucket(bucketMeta.name)
		require.NoError(t, err)
		return meta.Put(keySchemaVersion, u64(SchemaVersion+1))
	})
	_, err := Open(path, Options{})
	require.ErrorIs(t, err, ErrSchemaTooNew)
	require.ErrorContains(t, err, fmt.Sprintf("the store has version %d, this binary knows up to %d", SchemaVersion+1, SchemaVersion))
	require.ErrorContains(t, err, path)
}

func TestOpenRefusesForeignDatabase(t *testing.T) {
	path := rawDB(t, func(tx *bbolt.Tx) error {
		_, err := tx.CreateBucket([]byte("outbox"))
		return err
	})
	_, err := Open(path, Options{})
	require.ErrorContains(t, err, "not a Tend store")
}

func TestOpenRefusesCorruptVersion(t *testing.T) {
	path := rawDB(t, func(tx *bbolt.Tx) error {
		meta, err := tx.CreateBucket(bucketMeta.name)
		require.NoError(t, err)
		return meta.Put(keySchemaVersion, []byte{1})
	})
	_, err := Open(path, Options{})
	require.ErrorContains(t, err, "corrupt schema version")
}

func TestMigrate(t *testing.T) {
	// A fake history: v0 kept agents in "nodes"; v1 renamed the bucket; v2
	// added a key.
	steps := []upgradeStep{
		{from: 1, about: "mark", apply: func(tx *bbolt.Tx) error {
			return tx.Bucket(bucketMeta.name).Put([]byte("marked"), []byte("yes"))
		}},
		{from: 0, about: "rename nodes to agents", apply: func(tx *bbolt.Tx) error {
			old := tx.Bucket([]byte("nodes"))
			nu, err := tx.CreateBucketIfNotExists(bucketAgents.name)
			if err != nil {
				return err
			}
			if err := old.ForEach(func(k, v []byte) error { return nu.Put(k, v) }); err != nil {
				return err
			}
			return tx.DeleteBucket([]byte("nodes"))
		}},
	}
	v0 := func(tx *bbolt.Tx) error {
		meta, err := tx.CreateBucket(bucketMeta.name)
		require.NoError(t, err)
		require.NoError(t, meta.Put(keySchemaVersion, u64(0)))
		nodes, err := tx.CreateBucket([]byte("nodes"))
		require.NoError(t, err)
		return nodes.Put([]byte("a1"), []byte(`{"id":"a1","name":"web-1"}`))
	}

	tests := []struct {
		name    string
		target  uint64
		steps   []upgradeStep
		wantErr string
		check   func(t *testing.T, tx *bbolt.Tx)
	}{
		{name: "v0 to v1", target: 1, steps: steps, check: func(t *testing.T, tx *bbolt.Tx) {
			require.Nil(t, tx.Bucket([]byte("nodes")))
			require.Equal(t, `{"id":"a1","name":"web-1"}`, string(tx.Bucket(bucketAgents.name).Get([]byte("a1"))))
			require.Nil(t, tx.Bucket(bucketMeta.name).Get([]byte("marked")))
		}},
		{name: "v0 to v2 in order", target: 2, steps: steps, check: func(t *testing.T, tx *bbolt.Tx) {
			require.Nil(t, tx.Bucket([]byte("nodes")))
			require.Equal(t, "yes", string(tx.Bucket(bucketMeta.name).Get([]byte("marked"))))
		}},
		{name: "missing step", target: 3, steps: steps, wantErr: "no upgrade from store schema version 2 to 3"},
		{name: "failing step rolls back", target: 1, steps: []upgradeStep{{from: 0, about: "boom", apply: func(*bbolt.Tx) error {
			return errors.New("boom")
		}}}, wantErr: "upgrade store schema 0→1 (boom): boom"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := rawDB(t, v0)
			db, err := bbolt.Open(path, 0o600, nil)
			require.NoError(t, err)
			defer db.Close()
			err = db.Update(func(tx *bbolt.Tx) error {
				found, err := migrate(tx, tt.target, tt.steps)
				if err == nil {
					require.Equal(t, uint64(0), found)
				}
				return err
			})
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				// Nothing changed: still v0 with its old bucket.
				require.NoError(t, db.View(func(tx *bbolt.Tx) error {
					v, err := schemaVersion(tx)
					require.NoError(t, err)
					require.Equal(t, uint64(0), v)
					require.NotNil(t, tx.Bucket([]byte("nodes")))
					return nil
				}))
				return
			}
			require.NoError(t, err)
			require.NoError(t, db.View(func(tx *bbolt.Tx) error {
				v, err := schemaVersion(tx)
				require.NoError(t, err)
				require.Equal(t, tt.target, v)
				for _, b := range allBuckets {
					require.NotNil(t, tx.Bucket(b.name), "bucket %s", b.name)
				}
				tt.check(t, tx)
				return nil
			}))
		})
	}
}

func TestMigrateCurrentIsNoop(t *testing.T) {
	s := testStore(t, Options{})
	require.NoError(t, s.db.Update(func(tx *bbolt.Tx) error {
		found, err := migrate(tx, SchemaVersion, upgrades)
		require.Equal(t, SchemaVersion, found)
		return err
	}))
}

func TestUpgradeTableIsConsistent(t *testing.T) {
	// Every version below the current one has exactly one step, and no step
	// goes beyond the current version.
	from := map[uint64]int{}
	for _, s := range upgrades {
		from[s.from]++
		require.Less(t, s.from, SchemaVersion)
		require.NotNil(t, s.apply)
	}
	for v := uint64(1); v < SchemaVersion; v++ {
		require.Equal(t, 1, from[v], "upgrade from version %d", v)
	}
}

func TestOpenLockedByAnotherProcess(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tend.db")
	s := testStoreAt(t, path, Options{})

	_, err := Open(path, Options{LockTimeout: 100 * time.Millisecond})
	require.ErrorIs(t, err, ErrLocked)
	require.ErrorContains(t, err, "data dir locked by another process")
	require.ErrorContains(t, err, path)

	require.NoError(t, s.Close())
	s2, err := Open(path, Options{LockTimeout: 100 * time.Millisecond})
	require.NoError(t, err)
	require.NoError(t, s2.Close())
}
