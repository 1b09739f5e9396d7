package api

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"

	"tend.dev/tend/controlplane/fleet"
	"tend.dev/tend/controlplane/ingest"
	"tend.dev/tend/controlplane/store"
	"tend.dev/tend/controlplane/store/bolt"
	"tend.dev/tend/internal/pki"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// chanStream is an agent's stream as the handler sees it, fed and read
// through channels.
type chanStream struct {
	grpc.ServerStream
	ctx context.Context
	in  chan *agentv1.ConnectRequest
	out chan *agentv1.ConnectResponse
}

func (s *chanStream) Context() context.Context { return s.ctx }

func (s *chanStream) Recv() (*agentv1.ConnectRequest, error) {
	select {
	case m, ok := <-s.in:
		if !ok {
			return nil, io.EOF
		}
		return m, nil
	case <-s.ctx.Done():
		return nil, s.ctx.Err()
	}
}

func (s *chanStream) Send(m *agentv1.ConnectResponse) error {
	select {
	case s.out <- m:
		return nil
	case <-s.ctx.Done():
		return s.ctx.Err()
	}
}

// gatedStore holds every commit until gate is closed.
type gatedStore struct {
	store.Store
	gate chan struct{}
}

func (g *gatedStore) CommitResults(b []store.ResultBatch) ([]store.CommitOutcome, error) {
	<-g.gate
	return g.Store.CommitResults(b)
}

// T1 (docs/BENCHMARKS.md): while the control plane holds an agent's
// result batches back (more than it takes in flight, all waiting for a
// slow commit), the agent's heartbeat waits behind them on the stream. The
// agent must not be marked down for that, however long the commits take;
// once they are done it is acknowledged and stays connected.
func TestAgentWhoseBatchesWaitForCommitIsNotMarkedDown(t *testing.T) {
	quiet := slog.New(slog.DiscardHandler)
	bst, err := bolt.Open(filepath.Join(t.TempDir(), "tend.db"), bolt.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { bst.Close() })
	const agentID = "agt-slow"
	require.NoError(t, bst.CreateToken(store.Token{ID: "tok", SecretHash: []byte("h"), ExpiresAt: time.Now().Add(time.Hour), Uses: 1}))
	require.NoError(t, bst.EnrollAgent("tok", []byte("h"), time.Now(), store.Agent{ID: agentID, Name: "slow-1", Status: store.StatusDisconnected, EnrolledAt: time.Now()}))
	st := &gatedStore{Store: bst, gate: make(chan struct{})}

	const ttl, grace = 200 * time.Millisecond, 100 * time.Millisecond
	fl, err := fleet.New(fleet.Config{Store: st, MinTTL: ttl, Grace: grace, RestartGrace: ttl + grace, Log: quiet})
	require.NoError(t, err)
	t.Cleanup(fl.Stop)
	ing := ingest.New(st, ingest.Options{}, quiet)
	ing.Start()
	t.Cleanup(func() {
		select {
		case <-st.gate:
		default:
			close(st.gate)
		}
		ing.Stop()
	})
	ps, err := NewPolicySet(st, quiet)
	require.NoError(t, err)
	h := &Stream{Store: st, Fleet: fl, Ingest: ing, Policies: ps, Log: quiet, Now: time.Now}

	ctx, cancel := context.WithCancel(context.WithValue(context.Background(), identityKey{},
		pki.Identity{ID: agentID, Role: pki.RoleAgent, Expiry: time.Now().Add(time.Hour)}))
	defer cancel()
	cs := &chanStream{ctx: ctx, in: make(chan *agentv1.ConnectRequest, 100), out: make(chan *agentv1.ConnectResponse, 100)}
	done := make(chan error, 1)
	go func() {
		done <- h.Connect(cs)
		cancel() // as gRPC ends the stream when its handler returns
	}()

	cs.in <- &agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Hello{Hello: &agentv1.Hello{Version: "test"}}}
	require.NotNil(t, (<-cs.out).GetWelcome())
	// More batches than the control plane takes in flight, then a
	// heartbeat behind them.
	const batches = maxInFlightAcks + 8
	for i := 1; i <= batches; i++ {
		cs.in <- &agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Results{Results: &agentv1.ResultBatch{
			BatchId: uint64(i),
			Results: []*agentv1.CheckResult{{Seq: uint64(i), CheckId: "c", Status: agentv1.CheckStatus_CHECK_STATUS_OK, Output: fmt.Sprint(i)}},
		}}}
	}
	cs.in <- &agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Heartbeat{Heartbeat: &agentv1.Heartbeat{OutboxDroppedTotal: 7}}}

	// Commits held for five times the TTL plus grace.
	time.Sleep(5 * (ttl + grace))
	a, _ := fl.Get(agentID)
	require.Equal(t, store.StatusConnected, a.Status, "marked down while its messages waited behind the control plane's own backlog")
	select {
	case err := <-done:
		t.Fatalf("stream ended while its batches waited for commit: %v", err)
	default:
	}

	close(st.gate)
	acked := 0
	deadline := time.After(10 * time.Second)
	for acked < batches {
		select {
		case m := <-cs.out:
			if ack := m.GetAck(); ack != nil {
				acked++
			}
		case err := <-done:
			t.Fatalf("stream ended before every batch was acknowledged (%d of %d): %v", acked, batches, err)
		case <-deadline:
			t.Fatalf("acknowledged %d of %d batches", acked, batches)
		}
	}
	// The heartbeat behind them was handled too (it carries the agent's
	// drop count; the control plane does not answer heartbeats).
	require.Eventually(t, func() bool {
		a, _ := fl.Get(agentID)
		return a.OutboxDropped == 7
	}, 10*time.Second, 5*time.Millisecond)
	a, _ = fl.Get(agentID)
	require.Equal(t, store.StatusConnected, a.Status)

	close(cs.in)
	require.NoError(t, <-done)
}
