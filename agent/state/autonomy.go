package state

import (
	"fmt"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// Standing orders and the reports of what the agent did under them.

// keyStandingOrders is the meta key of the last StandingOrders received.
const keyStandingOrders = "standing_orders"

// SaveStandingOrders stores the standing orders received from the control
// plane, durably, so that they survive a restart while it is away.
func (d *DB) SaveStandingOrders(o *agentv1.StandingOrders) error {
	b, err := proto.Marshal(o)
	if err != nil {
		return err
	}
	return d.Put(keyStandingOrders, b)
}

// LoadStandingOrders returns the stored standing orders (empty if none).
func (d *DB) LoadStandingOrders() (*agentv1.StandingOrders, error) {
	b, err := d.Get(keyStandingOrders)
	if err != nil {
		return nil, err
	}
	o := &agentv1.StandingOrders{}
	if err := proto.Unmarshal(b, o); err != nil {
		return nil, fmt.Errorf("stored standing orders in %s: %w", d.path, err)
	}
	return o, nil
}

// PutAutonomousRun stores (or replaces) a run report, durably.
func (d *DB) PutAutonomousRun(r *agentv1.AutonomousRun) error {
	if r.GetRunId() == "" {
		return fmt.Errorf("put autonomous run: empty run id")
	}
	b, err := proto.Marshal(r)
	if err != nil {
		return err
	}
	err = d.bolt.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketAutonomyRuns).Put([]byte(r.GetRunId()), b)
	})
	if err != nil {
		return fmt.Errorf("write autonomous run %s to agent state %s: %w", r.GetRunId(), d.path, err)
	}
	return nil
}

// AutonomousRuns returns every stored run report, by run id.
func (d *DB) AutonomousRuns() ([]*agentv1.AutonomousRun, error) {
	var out []*agentv1.AutonomousRun
	err := d.bolt.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketAutonomyRuns).ForEach(func(k, v []byte) error {
			r := &agentv1.AutonomousRun{}
			if err := proto.Unmarshal(v, r); err != nil {
				return fmt.Errorf("autonomous run %q: %w", k, err)
			}
			out = append(out, r)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("read autonomous runs from agent state %s: %w", d.path, err)
	}
	return out, nil
}

// DeleteAutonomousRun forgets a run the control plane acknowledged.
func (d *DB) DeleteAutonomousRun(runID string) error {
	err := d.bolt.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketAutonomyRuns).Delete([]byte(runID))
	})
	if err != nil {
		return fmt.Errorf("delete autonomous run %s from agent state %s: %w", runID, d.path, err)
	}
	return nil
}
