package state

import (
	"fmt"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// Get returns a copy of the value stored under key in the meta bucket, or
// nil if there is none.
func (d *DB) Get(key string) ([]byte, error) {
	var out []byte
	err := d.bolt.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get([]byte(key)); v != nil {
			out = append([]byte{}, v...)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read %q from agent state %s: %w", key, d.path, err)
	}
	return out, nil
}

// Put stores value under key in the meta bucket, durably. A nil value
// deletes the key. The key "schema_version" is reserved.
func (d *DB) Put(key string, value []byte) error {
	if key == "" {
		return fmt.Errorf("put into agent state: empty key")
	}
	if key == keySchemaVersion {
		return fmt.Errorf("put into agent state: key %q is reserved", key)
	}
	err := d.bolt.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketMeta)
		if value == nil {
			return b.Delete([]byte(key))
		}
		return b.Put([]byte(key), value)
	})
	if err != nil {
		return fmt.Errorf("write %q to agent state %s: %w", key, d.path, err)
	}
	return nil
}

// Delete removes key from the meta bucket.
func (d *DB) Delete(key string) error { return d.Put(key, nil) }

// SaveAssignment stores the last check assignment received from the control
// plane, so the agent keeps running its policy checks across restarts while
// the control plane is away.
func (d *DB) SaveAssignment(a *agentv1.CheckAssignment) error {
	if a == nil {
		return fmt.Errorf("save check assignment: nil assignment")
	}
	b, err := proto.Marshal(a)
	if err != nil {
		return fmt.Errorf("save check assignment generation %d: %w", a.GetGeneration(), err)
	}
	return d.Put(keyCheckAssignment, b)
}

// LoadAssignment returns the last saved check assignment, or nil if none was
// ever saved.
func (d *DB) LoadAssignment() (*agentv1.CheckAssignment, error) {
	b, err := d.Get(keyCheckAssignment)
	if err != nil || b == nil {
		return nil, err
	}
	a := &agentv1.CheckAssignment{}
	if err := proto.Unmarshal(b, a); err != nil {
		return nil, fmt.Errorf("load check assignment from agent state %s: %w", d.path, err)
	}
	return a, nil
}
