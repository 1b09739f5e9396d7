package e2e

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"tend.dev/tend/internal/pki"
	"tend.dev/tend/internal/task"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
	taskv1 "tend.dev/tend/proto/tend/task/v1"
)

// fakeControlPlane stands where the real one was (same address, same CA):
// it sends the envelopes the test gives it, byte for byte, and reports the
// agent's task updates. It lets the test play a compromised or replaying
// network against a real tend-agent.
type fakeControlPlane struct {
	agentv1.UnimplementedAgentServiceServer
	envelopes chan []byte
	updates   chan *agentv1.TaskUpdate
	hellos    chan *agentv1.Hello
}

func (f *fakeControlPlane) Connect(stream agentv1.AgentService_ConnectServer) error {
	m, err := stream.Recv()
	if err != nil {
		return err
	}
	f.hellos <- m.GetHello()
	if err := stream.Send(&agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_Welcome{Welcome: &agentv1.Welcome{
		HeartbeatInterval: durationpb.New(5 * time.Second), HeartbeatTtl: durationpb.New(10 * time.Second), ServerTime: timestamppb.Now(),
	}}}); err != nil {
		return err
	}
	recvErr := make(chan error, 1)
	out := make(chan *agentv1.ConnectResponse, 16)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			switch x := m.GetMsg().(type) {
			case *agentv1.ConnectRequest_TaskUpdate:
				f.updates <- x.TaskUpdate
				out <- &agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_TaskAck{TaskAck: &agentv1.TaskUpdateAck{TaskId: x.TaskUpdate.GetTaskId(), State: x.TaskUpdate.GetState()}}}
			case *agentv1.ConnectRequest_Results:
				last := x.Results.GetResults()[len(x.Results.GetResults())-1].GetSeq()
				out <- &agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_Ack{Ack: &agentv1.BatchAck{BatchId: x.Results.GetBatchId(), AckedThrough: last}}}
			}
		}
	}()
	for {
		select {
		case err := <-recvErr:
			return err
		case env := <-f.envelopes:
			if err := stream.Send(&agentv1.ConnectResponse{Msg: &agentv1.ConnectResponse_Task{Task: &agentv1.TaskDelivery{Envelope: env}}}); err != nil {
				return err
			}
		case m := <-out:
			if err := stream.Send(m); err != nil {
				return err
			}
		}
	}
}

// Replay and forgery against a real agent: a captured task re-sent (also
// after the agent is SIGKILLed and restarted), a flipped byte, an unknown
// key, an expired task, a task for another agent, an action outside the
// allow-list: each rejected with its own reason, and executed 0 times
// beyond the first.
func TestForgedAndReplayedTasksAreNotExecuted(t *testing.T) {
	cpDir := t.TempDir()
	cp := startControlPlane(t, cpDir, "")
	runs := t.TempDir() // every execution creates one file here
	dir := t.TempDir()
	cfg := writeFile(t, dir, "agent.yaml", "pluginDir: \""+binDir+"\"\nactions:\n  exec.run:\n    commands: [[\"/usr/bin/mktemp\", \"-p\", \""+runs+"\", \"run.XXXXXX\"]]\n")
	agentData := filepath.Join(dir, "data")
	a := startAgent(t, cp, "victim", agentData, cp.token(t), "--config", cfg)
	cp.waitAgentStatus(t, "victim", "connected", 20*time.Second)
	agentID := cp.agents(t)["victim"].ID

	// The real control plane goes away; the fake takes its address.
	cp.stop(syscall.SIGTERM, 10*time.Second)
	ca, err := pki.ParseCA(mustRead(t, filepath.Join(cpDir, "ca.crt")), mustRead(t, filepath.Join(cpDir, "ca.key")))
	require.NoError(t, err)
	key, _, err := pki.LoadOrCreateSigningKey(filepath.Join(cpDir, pki.SigningKeyFile))
	require.NoError(t, err)
	serverCert, err := ca.IssueServerCert([]string{"127.0.0.1"}, time.Hour)
	require.NoError(t, err)
	lis, err := net.Listen("tcp", cp.addr)
	require.NoError(t, err)
	fake := &fakeControlPlane{envelopes: make(chan []byte, 16), updates: make(chan *agentv1.TaskUpdate, 64), hellos: make(chan *agentv1.Hello, 4)}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{serverCert}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ca.Pool(), MinVersion: tls.VersionTLS13,
	})))
	agentv1.RegisterAgentServiceServer(srv, fake)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	waitHello := func() {
		select {
		case <-fake.hellos:
		case <-time.After(30 * time.Second):
			t.Fatal("the agent did not connect to the fake control plane")
		}
	}
	waitHello()

	params, err := structpb.NewStruct(map[string]any{"argv": []any{"/usr/bin/mktemp", "-p", runs, "run.XXXXXX"}})
	require.NoError(t, err)
	mk := func(id string, seq uint64, mutate func(*taskv1.Task)) *taskv1.Task {
		tk := &taskv1.Task{TaskId: id, AgentId: agentID, IncidentId: "inc-test", Policy: "p", PolicyVersion: 1, Action: "exec.run",
			Params: params, Seq: seq, NotBefore: timestamppb.New(time.Now().Add(-5 * time.Second)),
			ExpiresAt: timestamppb.New(time.Now().Add(time.Minute)), Timeout: durationpb.New(10 * time.Second), Attempt: 1}
		if mutate != nil {
			mutate(tk)
		}
		return tk
	}
	seal := func(k *pki.SigningKey, tk *taskv1.Task) []byte {
		env, err := task.Seal(k, tk)
		require.NoError(t, err)
		return env
	}
	// await returns the final update of a task (succeeded, failed, rejected,
	// expired).
	await := func(id string) *agentv1.TaskUpdate {
		t.Helper()
		deadline := time.After(30 * time.Second)
		for {
			select {
			case u := <-fake.updates:
				if u.GetTaskId() != id {
					continue
				}
				switch u.GetState() {
				case agentv1.TaskState_TASK_STATE_SUCCEEDED, agentv1.TaskState_TASK_STATE_FAILED, agentv1.TaskState_TASK_STATE_REJECTED,
					agentv1.TaskState_TASK_STATE_EXPIRED:
					return u
				}
			case <-deadline:
				t.Fatalf("no final update for task %s", id)
			}
		}
	}
	executions := func() int {
		entries, err := os.ReadDir(runs)
		require.NoError(t, err)
		return len(entries)
	}
	send := func(env []byte) { fake.envelopes <- env }

	// 1. A genuine task runs once.
	genuine := seal(key, mk("task-genuine", 1, nil))
	send(genuine)
	require.Equal(t, agentv1.TaskState_TASK_STATE_SUCCEEDED, await("task-genuine").GetState())
	require.Equal(t, 1, executions())

	// 2. Rejections, each with its own reason.
	flipped := seal(key, mk("task-flipped", 2, nil))
	flipped[len(flipped)/2] ^= 0x01
	_, otherPriv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	otherPub := otherPriv.Public().(ed25519.PublicKey)
	unknownKey := &pki.SigningKey{ID: pki.KeyID(otherPub), Priv: otherPriv, Pub: otherPub}
	wrongType, err := task.SealPayload(key, "tend.task.v1.NotATask", mustMarshal(t, mk("task-wrongtype", 6, nil)))
	require.NoError(t, err)
	cases := []struct {
		name, id, reason string
		env              []byte
	}{
		{"replayed", "task-genuine", "replay", genuine},
		{"flipped byte", "task-flipped", "", flipped},
		{"unknown key", "task-unknown-key", "key", seal(unknownKey, mk("task-unknown-key", 3, nil))},
		{"expired", "task-expired", "expired", seal(key, mk("task-expired", 4, func(tk *taskv1.Task) {
			tk.NotBefore = timestamppb.New(time.Now().Add(-10 * time.Minute))
			tk.ExpiresAt = timestamppb.New(time.Now().Add(-5 * time.Minute))
		}))},
		{"other agent", "task-other-agent", "agt-someone-else", seal(key, mk("task-other-agent", 5, func(tk *taskv1.Task) { tk.AgentId = "agt-someone-else" }))},
		{"wrong payload type", "task-wrongtype", "payload type", wrongType},
		{"outside the allow-list", "task-not-allowed", "allow", seal(key, mk("task-not-allowed", 7, func(tk *taskv1.Task) {
			p, _ := structpb.NewStruct(map[string]any{"argv": []any{"/usr/bin/mktemp", "-p", runs, "evil.XXXXXX", "; touch /tmp/pwned"}})
			tk.Params = p
		}))},
	}
	for _, c := range cases {
		send(c.env)
		var u *agentv1.TaskUpdate
		if c.id == "task-flipped" || c.id == "task-wrongtype" {
			// The id may not be recoverable (a flipped byte in it, or a
			// payload that is not a task): take the next rejection.
			select {
			case u = <-fake.updates:
			case <-time.After(30 * time.Second):
				t.Fatal("no update for the flipped envelope")
			}
		} else {
			u = await(c.id)
		}
		want := agentv1.TaskState_TASK_STATE_REJECTED
		if c.id == "task-expired" {
			want = agentv1.TaskState_TASK_STATE_EXPIRED // too late, not refused: the control plane may retry
		}
		require.Equal(t, want, u.GetState(), "%s: %v", c.name, u)
		require.Contains(t, u.GetReason(), c.reason, c.name)
		t.Logf("%-24s rejected: %s", c.name, u.GetReason())
		require.Equal(t, 1, executions(), "%s must not execute", c.name)
	}

	// 3. After SIGKILL and restart, the captured task is still a replay.
	a.kill()
	startAgent(t, cp, "victim", agentData, "", "--config", cfg)
	waitHello()
	send(genuine)
	u := await("task-genuine")
	require.Equal(t, agentv1.TaskState_TASK_STATE_REJECTED, u.GetState())
	require.Contains(t, u.GetReason(), "replay")
	require.Equal(t, 1, executions(), "executed once in all")
}

func mustMarshal(t *testing.T, m proto.Message) []byte {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	require.NoError(t, err)
	return b
}
