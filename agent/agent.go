// Package agent wires the Tend agent together: identity (enrollment and
// renewal), the local state database and outbox, the check scheduler, and
// the stream to the control plane.
package agent

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"tend.dev/tend/agent/autonomy"
	"tend.dev/tend/agent/checks"
	"tend.dev/tend/agent/config"
	"tend.dev/tend/agent/identity"
	"tend.dev/tend/agent/pluginhost"
	"tend.dev/tend/agent/scheduler"
	"tend.dev/tend/agent/state"
	"tend.dev/tend/agent/stream"
	"tend.dev/tend/agent/tasks"
	"tend.dev/tend/internal/task"
	"tend.dev/tend/internal/version"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
	taskv1 "tend.dev/tend/proto/tend/task/v1"
)

// StateFile is the agent's bbolt database in its data dir.
const StateFile = "agent.db"

// Config is the agent's resolved configuration (flags over agent.yaml).
type Config struct {
	Server      string
	DataDir     string
	Name        string
	Labels      map[string]string
	Token       string
	LocalChecks []*agentv1.CheckSpec
	OutboxMax   int
	MaxBackoff  time.Duration
	// ResultLinger is how long a passing result that does not change its
	// check's status may wait to share an outbox transaction with others
	// (default DefaultResultLinger; negative: never).
	ResultLinger time.Duration
	// Actions is the host's allow-list (agent.yaml actions:); absent
	// actions are denied.
	Actions map[string]config.ActionRule
	// PluginDir holds the tend-plugin-* binaries; they are catalogued with
	// their SHA-256 at start, and a binary changed afterwards is refused.
	PluginDir string
	Log       *slog.Logger
}

// Agent is a running tend-agent.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	db      *state.DB
	id      *identity.Identity
	sched   *scheduler.Scheduler
	client  *stream.Client
	allow   tasks.AllowList
	host    *pluginhost.Host
	runner  *tasks.Runner
	auto    *autonomy.Autonomy
	out     *coalescer
	plugins []string

	mu         sync.Mutex
	assigned   []*agentv1.CheckSpec
	generation uint64 // of the last assignment applied
}

// New opens the data dir and enrolls on first start.
func New(ctx context.Context, cfg Config) (*Agent, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Server == "" {
		return nil, errors.New("no control plane address: pass --server HOST:PORT or set server in agent.yaml")
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir %s: %w", cfg.DataDir, err)
	}
	a := &Agent{cfg: cfg, log: cfg.Log}
	allow, err := tasks.NewAllowList(cfg.Actions)
	if err != nil {
		return nil, fmt.Errorf("agent.yaml actions: %w", err)
	}
	a.allow = allow
	cat := pluginhost.Catalog{}
	if cfg.PluginDir != "" {
		if cat, err = pluginhost.LoadCatalog(cfg.PluginDir); err != nil {
			return nil, fmt.Errorf("plugin dir: %w", err)
		}
	}
	a.host = pluginhost.New(cat, cfg.Log.With("component", "pluginhost"))
	a.plugins = cat.Names()
	db, err := state.Open(filepath.Join(cfg.DataDir, StateFile), state.Options{OutboxMax: cfg.OutboxMax})
	if err != nil {
		return nil, err
	}
	a.db = db
	id, err := identity.Load(cfg.DataDir)
	switch {
	case errors.Is(err, identity.ErrNotEnrolled):
		if cfg.Token == "" {
			db.Close()
			return nil, fmt.Errorf("agent is not enrolled yet (no credentials in %s): pass --token from 'tendctl token create' on the first start", cfg.DataDir)
		}
		a.log.Info("enrolling", "server", cfg.Server, "name", cfg.Name)
		id, err = identity.Enroll(ctx, cfg.DataDir, identity.EnrollOptions{
			Server: cfg.Server, Token: cfg.Token, Name: cfg.Name, Labels: cfg.Labels, Version: version.Version,
		})
		if err != nil {
			db.Close()
			return nil, err
		}
		a.log.Info("enrolled", "agent_id", id.AgentID(), "cert_expires", id.Expiry())
	case err != nil:
		db.Close()
		return nil, fmt.Errorf("load identity from %s: %w", cfg.DataDir, err)
	case time.Now().After(id.Expiry()):
		// Off for longer than the certificate's lifetime: it can no longer
		// renew. With a token, enroll again under a new identity and keep
		// the outbox (results taken meanwhile are still delivered).
		if cfg.Token == "" {
			db.Close()
			return nil, fmt.Errorf("the agent's certificate expired at %s (it was off longer than its lifetime): start it once with --token from 'tendctl token create' to enroll again; results in its outbox are kept", id.Expiry().Format(time.RFC3339))
		}
		old := id.AgentID()
		if err := identity.Retire(cfg.DataDir); err != nil {
			db.Close()
			return nil, err
		}
		if err := db.ResetTaskHighWater(); err != nil {
			db.Close()
			return nil, err
		}
		a.log.Warn("certificate expired: enrolling again", "old_agent_id", old, "expired", id.Expiry())
		id, err = identity.Enroll(ctx, cfg.DataDir, identity.EnrollOptions{
			Server: cfg.Server, Token: cfg.Token, Name: cfg.Name, Labels: cfg.Labels, Version: version.Version,
		})
		if err != nil {
			db.Close()
			return nil, err
		}
		a.log.Info("enrolled again", "agent_id", id.AgentID(), "old_agent_id", old, "cert_expires", id.Expiry())
	default:
		if cfg.Token != "" {
			a.log.Info("already enrolled; --token ignored", "agent_id", id.AgentID())
		}
	}
	a.id = id
	a.log = a.log.With("agent_id", id.AgentID())
	linger := cfg.ResultLinger
	if linger == 0 {
		linger = DefaultResultLinger
	}
	a.out = newCoalescer(linger, db.Append, a.appended, a.appendFailed)
	return a, nil
}

// ID is the agent's id.
func (a *Agent) ID() string { return a.id.AgentID() }

func (a *Agent) dial(ctx context.Context) (*grpc.ClientConn, error) {
	return grpc.NewClient(a.cfg.Server, append(stream.DialOptions(),
		grpc.WithTransportCredentials(credentials.NewTLS(a.id.TLSConfig(a.cfg.Server))),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true}),
	)...)
}

func (a *Agent) sink(spec *agentv1.CheckSpec, res checks.Result, started time.Time, took time.Duration) {
	r := &agentv1.CheckResult{
		CheckId:       spec.GetId(),
		PolicyVersion: spec.GetPolicyVersion(),
		Status:        res.Status,
		Output:        res.Output,
		Metrics:       res.Metrics,
		StartedAt:     timestamppb.New(started),
		Duration:      durationpb.New(took),
	}
	a.out.Add(r)
}

// appended hands on results once they are durable in the outbox: the
// stream sends them, autonomy counts them (it needs their seq).
func (a *Agent) appended(rs []*agentv1.CheckResult) {
	if a.client != nil {
		a.client.Notify()
	}
	if a.auto != nil {
		for _, r := range rs {
			a.auto.Observe(r)
		}
	}
}

func (a *Agent) appendFailed(rs []*agentv1.CheckResult, err error) {
	for _, r := range rs {
		a.log.Error("outbox append failed: result lost", "check_id", r.GetCheckId(), "err", err)
	}
}

func (a *Agent) applyChecks() {
	a.mu.Lock()
	specs := append(append([]*agentv1.CheckSpec{}, a.cfg.LocalChecks...), a.assigned...)
	a.mu.Unlock()
	if err := a.sched.Update(specs); err != nil {
		a.log.Warn("some checks could not start", "err", err)
	}
}

func (a *Agent) onAssignment(asg *agentv1.CheckAssignment) {
	a.mu.Lock()
	stale := asg.GetGeneration() < a.generation
	if !stale {
		a.generation = asg.GetGeneration()
	}
	a.mu.Unlock()
	if stale {
		a.log.Info("older check assignment ignored", "generation", asg.GetGeneration())
		return
	}
	if err := a.db.SaveAssignment(asg); err != nil {
		a.log.Error("persist check assignment", "err", err)
	}
	a.mu.Lock()
	a.assigned = asg.GetChecks()
	a.mu.Unlock()
	a.log.Info("checks assigned", "generation", asg.GetGeneration(), "checks", len(asg.GetChecks()))
	a.applyChecks()
}

func (a *Agent) hello() *agentv1.Hello {
	pending, dropped, _ := a.db.Stats()
	host, _ := os.Hostname()
	a.mu.Lock()
	defer a.mu.Unlock()
	var gen uint64
	if asg, err := a.db.LoadAssignment(); err == nil && asg != nil {
		gen = asg.GetGeneration()
	}
	return &agentv1.Hello{
		Version:            version.Version,
		Labels:             a.cfg.Labels,
		Facts:              map[string]string{"os": runtime.GOOS, "arch": runtime.GOARCH, "hostname": host},
		LocalChecks:        a.cfg.LocalChecks,
		ChecksGeneration:   gen,
		OutboxDroppedTotal: dropped,
		OutboxPending:      pending,
	}
}

// renewLoop renews the certificate at two thirds of its lifetime, retrying
// every 30 s on failure.
func (a *Agent) renewLoop(ctx context.Context) {
	for {
		wait := time.Until(a.id.RenewAt())
		if wait < 0 {
			wait = 0
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		err := func() error {
			conn, err := a.dial(ctx)
			if err != nil {
				return err
			}
			defer conn.Close()
			rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			return a.id.Renew(rctx, conn)
		}()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			a.log.Warn("certificate renewal failed; retrying in 30s", "err", err, "expires", a.id.Expiry())
			select {
			case <-ctx.Done():
				return
			case <-time.After(30 * time.Second):
			}
			continue
		}
		a.log.Info("certificate renewed", "expires", a.id.Expiry(), "serial", a.id.Serial())
	}
}

// Run runs checks and the stream until ctx is done.
func (a *Agent) Run(ctx context.Context) error {
	defer a.db.Close()
	bo := stream.DefaultBackoff()
	if a.cfg.MaxBackoff > 0 {
		bo.Max = a.cfg.MaxBackoff
	}
	a.client = stream.New(stream.Config{
		Dial:         a.dial,
		DB:           a.db,
		Hello:        a.hello,
		OnAssignment: a.onAssignment,
		OnTask:       func(d *agentv1.TaskDelivery) { a.runner.Deliver(d) },
		OnSigningKeys: func(ks *agentv1.SigningKeySet) (bool, error) {
			return a.id.SetSigningKeys(ks.GetKeys())
		},
		KeyIDs: a.id.SigningKeyIDs,
		OnStandingOrders: func(so *agentv1.StandingOrders) {
			if err := a.auto.SetOrders(so); err != nil {
				a.log.Error("cannot store the standing orders", "err", err)
			}
		},
		AutonomousRuns: func() ([]*agentv1.AutonomousRun, error) { return a.auto.Reports() },
		OnRefused:      func(err error) { a.auto.Withdraw("the control plane refused this agent: " + err.Error()) },
		OnAutonomousAck: func(id string) {
			if err := a.auto.Acked(id); err != nil {
				a.log.Error("cannot forget an acknowledged autonomous run", "run", id, "err", err)
			}
		},
		// Generations only order assignments within one stream: a
		// control plane restarted with another clock starts afresh.
		OnWelcome: func(*agentv1.Welcome) {
			a.mu.Lock()
			a.generation = 0
			a.mu.Unlock()
		},
		Backoff: bo,
		Log:     a.cfg.Log,
	})
	a.runner = tasks.New(tasks.Config{
		DB:      a.db,
		AgentID: a.id.AgentID(),
		// Read for every task: keys rotated in by a renewal apply at once.
		Keys:   func() map[string]ed25519.PublicKey { return task.KeyMap(a.id.SigningKeys()) },
		Allow:  a.allow,
		Exec:   a.host,
		Notify: a.client.NotifyTasks,
		Log:    a.log.With("component", "tasks"),
	})
	a.runner.Start()
	defer a.host.Close()
	defer a.runner.Stop()
	auto, err := autonomy.New(autonomy.Config{
		DB:      a.db,
		AgentID: a.id.AgentID(),
		Keys:    func() map[string]ed25519.PublicKey { return task.KeyMap(a.id.SigningKeys()) },
		Run: func(ctx context.Context, runID string, o *taskv1.StandingOrder) tasks.LocalResult {
			return a.runner.RunLocal(ctx, runID, o.GetAction(), o.GetParams(), o.GetTimeout().AsDuration())
		},
		Offline:     a.client.OfflineFor,
		Busy:        a.runner.Busy,
		LastTaskEnd: a.runner.LastTaskEnd,
		Notify:      a.client.NotifyRuns,
		Log:         a.log,
	})
	if err != nil {
		return err
	}
	a.auto = auto
	defer auto.Stop()
	go a.warmPlugins()

	// Deferred calls run last first: the checks stop, then the results
	// still waiting are appended (and seen by autonomy), then autonomy
	// stops.
	defer a.out.Close()
	// Checks of the same interval run together, at a phase of this agent's
	// own: their results share one outbox transaction and one message,
	// and agents still spread over the interval.
	a.sched = scheduler.New(a.sink, a.log.With("component", "scheduler"), scheduler.WithPhase(rand.N(24*time.Hour)))
	defer a.sched.Stop()

	// Keep running the last assigned checks while the control plane is away.
	if asg, err := a.db.LoadAssignment(); err != nil {
		a.log.Warn("load last check assignment", "err", err)
	} else if asg != nil {
		a.assigned = asg.GetChecks()
		a.generation = asg.GetGeneration()
	}
	a.applyChecks()

	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); a.renewLoop(ctx) }()
	a.log.Info("agent running", "server", a.cfg.Server, "local_checks", len(a.cfg.LocalChecks), "assigned_checks", len(a.assigned),
		"allowed_actions", a.allow.Actions(), "plugins", a.plugins)
	err = a.client.Run(ctx)
	wg.Wait()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	a.log.Info("agent stopped")
	return err
}

// CertSerial is the serial of the agent's current certificate.
func (a *Agent) CertSerial() string { return a.id.Serial() }

// warmPlugins starts the plugins of the allowed actions in the background,
// so that the first remediation does not wait for a plugin to launch, and a
// plugin that is missing or changed since it was catalogued shows up in the
// log at start rather than during an incident.
func (a *Agent) warmPlugins() {
	seen := map[string]bool{}
	for _, action := range a.allow.Actions() {
		name, _, _ := strings.Cut(action, ".")
		if seen[name] {
			continue
		}
		seen[name] = true
		if !slices.Contains(a.plugins, name) {
			a.log.Warn("allowed action has no plugin", "action", action, "plugin_dir", a.cfg.PluginDir)
			continue
		}
		d, err := a.host.Describe(name)
		if err != nil {
			a.log.Warn("plugin does not start", "plugin", name, "err", err)
			continue
		}
		a.log.Info("plugin ready", "plugin", name, "version", d.GetVersion(), "actions", len(d.GetActions()))
	}
}

// Close releases an agent that was created but will not Run.
func (a *Agent) Close() error {
	a.host.Close()
	return a.db.Close()
}
