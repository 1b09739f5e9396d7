// Package pluginhost runs Tend's action plugins (tend-plugin-* binaries)
// for the agent, through hashicorp/go-plugin over gRPC.
//
// Plugins come from a Catalog, loaded once, that records the SHA-256 of
// each binary. Before every start the host copies the binary into a sealed
// memfd, hashing the bytes it copies, and runs the copy (exec_linux.go):
// a binary changed after it was catalogued is refused, and one swapped
// between the check and the start cannot run. A plugin is started on first
// use and kept running; AutoMTLS secures the connection.
//
// Each plugin leads its own session and process group. When a call passes
// its deadline (the task's timeout) or is cancelled, the host kills the
// plugin's process group and every other process left in its session
// (SIGKILL), kills the go-plugin client and returns an error wrapping
// ErrTimeout; the next call starts the plugin again. A plugin that dies
// during a call (gRPC Unavailable, or its process exited) makes that call
// fail with ErrCrashed and is started again on the next call. Close kills
// every plugin, so none is left behind.
package pluginhost

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	"tend.dev/tend/plugins/sdk"
	pluginv1 "tend.dev/tend/proto/tend/plugin/v1"
)

var (
	// ErrNoPlugin: no plugin in the catalog serves the action's plugin name.
	ErrNoPlugin = errors.New("no plugin")
	// ErrRefused: the binary was not started or not trusted, most of all
	// because it no longer matches the SHA-256 in the catalog.
	ErrRefused = errors.New("plugin refused")
	// ErrTimeout: the call passed its deadline and the plugin was killed.
	ErrTimeout = errors.New("plugin timed out")
	// ErrCrashed: the plugin died during the call; it is started again on
	// the next call.
	ErrCrashed = errors.New("plugin crashed")
	// ErrClosed: the host was closed.
	ErrClosed = errors.New("plugin host is closed")
)

// Invalid parameters are reported with errors wrapping
// sdk.ErrInvalidParams, and actions a plugin does not serve with errors
// wrapping sdk.ErrUnknownAction.

const (
	// startTimeout bounds a plugin's start and handshake.
	startTimeout = 15 * time.Second
	// validateTimeout bounds Validate when ctx has no earlier deadline.
	validateTimeout = 10 * time.Second
	// killTimeout bounds the wait for go-plugin to clean up a client.
	killTimeout = 10 * time.Second
)

// Host starts plugins from a catalog and calls them. Its methods are safe
// for concurrent use.
type Host struct {
	cat    Catalog
	log    *slog.Logger
	slots  map[string]*slot
	closed atomic.Bool
}

// slot holds the running instance of one plugin.
type slot struct {
	mu   sync.Mutex
	inst *instance
}

// instance is one running plugin process.
type instance struct {
	name   string
	client *plugin.Client
	rpc    pluginv1.ActionServiceClient
	pid    int
	// proc is the plugin's process, from its start: on Linux it holds a
	// pidfd, so asking whether it is alive can never be answered by
	// another process that was given its pid since.
	proc    *os.Process
	actions []string // full action names, from Describe
	desc    *pluginv1.DescribeResponse

	killOnce sync.Once
	killed   atomic.Pointer[string] // why the host killed it
}

// New returns a host for the plugins in cat; log may be nil. No plugin is
// started until it is used.
func New(cat Catalog, log *slog.Logger) *Host {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &Host{cat: cat, log: log, slots: map[string]*slot{}}
	for name := range cat {
		h.slots[name] = &slot{}
	}
	return h
}

// splitAction returns the plugin name of "<plugin>.<action>".
func splitAction(action string) (string, error) {
	name, rest, ok := strings.Cut(action, ".")
	if !ok || name == "" || rest == "" {
		return "", fmt.Errorf("%w: invalid action %s: want <plugin>.<action>, e.g. process.restart", sdk.ErrUnknownAction, sdk.Quote(action, 100))
	}
	return name, nil
}

// instanceFor returns the running plugin that serves action, starting it
// if needed.
func (h *Host) instanceFor(action string) (*instance, error) {
	name, err := splitAction(action)
	if err != nil {
		return nil, err
	}
	inst, err := h.instance(name, action)
	if err != nil {
		return nil, err
	}
	for _, a := range inst.actions {
		if a == action {
			return inst, nil
		}
	}
	return nil, fmt.Errorf("%w %s: plugin %s serves %s", sdk.ErrUnknownAction, sdk.Quote(action, 100), name, strings.Join(inst.actions, ", "))
}

func (h *Host) instance(name, action string) (*instance, error) {
	s, ok := h.slots[name]
	if !ok {
		return nil, fmt.Errorf("%w for action %s (catalog: %s)", ErrNoPlugin, sdk.Quote(action, 100), strings.Join(h.cat.Names(), ", "))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if h.closed.Load() {
		return nil, ErrClosed
	}
	if inst := s.inst; inst != nil {
		if !inst.client.Exited() && inst.killed.Load() == nil {
			return inst, nil
		}
		h.log.Warn("plugin exited; starting it again", "plugin", name, "pid", inst.pid)
		h.kill(inst, "it had exited")
		s.inst = nil
	}
	inst, err := h.start(name, h.cat[name])
	if err != nil {
		return nil, err
	}
	s.inst = inst
	return inst, nil
}

// pluginEnv is the whole environment of a plugin: a few variables from the
// agent's, never its secrets.
func pluginEnv() []string {
	env := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	if p := os.Getenv("PATH"); p != "" {
		env[0] = "PATH=" + p
	}
	for _, k := range []string{"TMPDIR", "TZ", "DBUS_SYSTEM_BUS_ADDRESS"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return env
}

func (h *Host) start(name string, e Entry) (*instance, error) {
	log := h.log.With("plugin", name)
	// What runs is exactly what the catalog hashed (exec_linux.go).
	cmd, pinned, secure, how, err := verifiedCmd(name, e)
	if err != nil {
		if errors.Is(err, plugin.ErrChecksumsDoNotMatch) {
			return nil, fmt.Errorf("%w: %s no longer matches the SHA-256 %x recorded when the plugin catalog was loaded: it was changed after it was catalogued, so it is not run (reload the catalog, i.e. restart the agent, to trust a new binary): %w",
				ErrRefused, e.Path, e.SHA256, err)
		}
		return nil, fmt.Errorf("%w: cannot start plugin %s (%s): %w", ErrRefused, name, e.Path, err)
	}
	if pinned != nil {
		// The child has its own copy of the descriptor once started.
		defer pinned.Close()
	}
	cmd.Env = pluginEnv()
	// Its own session, and so its own process group: a timeout kills
	// both without touching the agent.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  sdk.Handshake,
		VersionedPlugins: sdk.VersionedPlugins(nil),
		Cmd:              cmd,
		SkipHostEnv:      true,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		AutoMTLS:         true,
		Managed:          false,
		SecureConfig:     secure,
		StartTimeout:     startTimeout,
		SyncStdout:       &lineWriter{log: log, level: slog.LevelInfo, msg: "plugin stdout"},
		SyncStderr:       &lineWriter{log: log, level: slog.LevelWarn, msg: "plugin stderr"},
		Logger:           newHCLogger(log),
	})
	proto, err := client.Client()
	if err != nil {
		killClient(client, log)
		if errors.Is(err, plugin.ErrChecksumsDoNotMatch) {
			return nil, fmt.Errorf("%w: %s no longer matches the SHA-256 %x recorded when the plugin catalog was loaded: it was changed after it was catalogued, so it is not run (reload the catalog, i.e. restart the agent, to trust a new binary): %w",
				ErrRefused, e.Path, e.SHA256, err)
		}
		return nil, fmt.Errorf("%w: cannot start plugin %s (%s): %w", ErrRefused, name, e.Path, err)
	}
	inst := &instance{name: name, client: client, pid: cmd.Process.Pid, proc: cmd.Process}
	fail := func(format string, args ...any) (*instance, error) {
		h.kill(inst, "it failed to start")
		return nil, fmt.Errorf("%w: plugin %s (%s): %s", ErrRefused, name, e.Path, fmt.Sprintf(format, args...))
	}
	raw, err := proto.Dispense(sdk.PluginName)
	if err != nil {
		return fail("dispense: %v", err)
	}
	c, ok := raw.(*sdk.Client)
	if !ok {
		return fail("dispensed %T", raw)
	}
	inst.rpc = c.RPC()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	desc, err := c.Describe(ctx)
	if err != nil {
		return fail("describe: %v", err)
	}
	if desc.GetName() != name {
		return fail("the binary says it is plugin %s, not %s", sdk.Quote(desc.GetName(), 64), name)
	}
	inst.desc = desc
	for _, a := range desc.GetActions() {
		inst.actions = append(inst.actions, name+"."+a.GetName())
	}
	log.Info("plugin started", "pid", inst.pid, "version", desc.GetVersion(), "actions", strings.Join(inst.actions, ","), "verified_via", how)
	return inst, nil
}

// kill ends a plugin for good: SIGKILL to its process group and to
// whatever else is left in its session, then go-plugin's cleanup. Safe to
// call more than once and concurrently.
func (h *Host) kill(inst *instance, why string) {
	inst.killOnce.Do(func() {
		inst.killed.Store(&why)
		if inst.pid > 1 && ownsPid(inst) {
			_ = syscall.Kill(-inst.pid, syscall.SIGKILL)
			killSession(inst.pid)
		} else if inst.pid > 1 {
			h.log.Warn("plugin exited and its pid now names another process; not signalling that process's group or session", "plugin", inst.name, "pid", inst.pid)
		}
		killClient(inst.client, h.log.With("plugin", inst.name))
		h.log.Info("plugin killed", "plugin", inst.name, "pid", inst.pid, "reason", why)
	})
}

// ownsPid reports whether the plugin's pid, as a process group and session
// id, still names the plugin's: either the plugin runs (asked through its
// pidfd, which no other process can answer for), or no process has that
// pid, so the group and session can only be what the plugin left behind
// (a pid is not given out again while a process group or session holds
// it). A plugin that exited and was reaped (go-plugin waits for it) gives
// its pid back: killing -pid then could kill an unrelated process group.
func ownsPid(inst *instance) bool {
	if inst.proc != nil && inst.proc.Signal(syscall.Signal(0)) == nil {
		return true
	}
	_, err := os.Stat(fmt.Sprintf("/proc/%d", inst.pid))
	return errors.Is(err, os.ErrNotExist)
}

// killClient runs go-plugin's Kill, which waits for the plugin's output
// pipes, with a bound.
func killClient(c *plugin.Client, log *slog.Logger) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Kill()
	}()
	select {
	case <-done:
	case <-time.After(killTimeout):
		log.Warn("go-plugin client cleanup did not finish; leaving it", "timeout", killTimeout)
	}
}

// forget removes inst from its slot if it is still the running one.
func (h *Host) forget(inst *instance) {
	s := h.slots[inst.name]
	s.mu.Lock()
	if s.inst == inst {
		s.inst = nil
	}
	s.mu.Unlock()
}

// callError turns the error of a call to inst into the host's errors,
// killing the plugin when the call passed its deadline or the plugin died.
func (h *Host) callError(ctx context.Context, inst *instance, action string, timeout time.Duration, err error) error {
	code := status.Code(err)
	switch {
	case ctx.Err() != nil || code == codes.DeadlineExceeded || code == codes.Canceled:
		cause := ctx.Err()
		if cause == nil {
			cause = context.DeadlineExceeded
			if code == codes.Canceled {
				cause = context.Canceled
			}
		}
		why := fmt.Sprintf("%s did not finish within %s", action, timeout)
		if errors.Is(cause, context.Canceled) {
			why = action + " was cancelled"
		}
		h.kill(inst, why)
		h.forget(inst)
		if errors.Is(cause, context.Canceled) {
			return fmt.Errorf("%s: cancelled; killed plugin %s (pid %d) and its process group: %w", action, inst.name, inst.pid, cause)
		}
		return fmt.Errorf("%w: %s did not finish within %s; killed plugin %s (pid %d) and its process group; it starts again on the next call: %w",
			ErrTimeout, action, timeout, inst.name, inst.pid, cause)
	case code == codes.Unavailable || inst.client.Exited():
		if h.closed.Load() {
			return fmt.Errorf("%s: %w", action, ErrClosed)
		}
		if why := inst.killed.Load(); why != nil {
			return fmt.Errorf("%w: plugin %s (pid %d) was killed while running %s, because %s; it starts again on the next call",
				ErrCrashed, inst.name, inst.pid, action, *why)
		}
		h.kill(inst, "it crashed")
		h.forget(inst)
		h.log.Error("plugin crashed", "plugin", inst.name, "pid", inst.pid, "action", action, "err", err)
		return fmt.Errorf("%w: plugin %s (pid %d) died while running %s (%v); it starts again on the next call",
			ErrCrashed, inst.name, inst.pid, action, status.Convert(err).Message())
	}
	return fmt.Errorf("%s: %w", action, sdk.FromStatus(err))
}

// Execute runs action ("<plugin>.<action>") with params for task taskID,
// within timeout (which must be positive) and ctx. The response's output
// is capped at 4 KiB and non-finite metrics are dropped. Errors wrap
// ErrNoPlugin, ErrRefused, ErrTimeout, ErrCrashed, ErrClosed,
// sdk.ErrInvalidParams or sdk.ErrUnknownAction; any other error is the
// plugin's.
func (h *Host) Execute(ctx context.Context, action string, params *structpb.Struct, taskID string, timeout time.Duration) (*pluginv1.ExecuteResponse, error) {
	if timeout <= 0 {
		return nil, fmt.Errorf("%s: the task timeout must be positive, got %s", action, timeout)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("%s: not started: %w", action, err)
	}
	inst, err := h.instanceFor(action)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	resp, err := inst.rpc.Execute(ctx, &pluginv1.ExecuteRequest{TaskId: taskID, Action: action, Params: params, Timeout: durationpb.New(timeout)})
	if err != nil {
		err = h.callError(ctx, inst, action, timeout, err)
		h.log.Warn("action failed", "action", action, "task_id", taskID, "err", err)
		return nil, err
	}
	resp = sdk.CleanResponse(resp)
	h.log.Info("action done", "action", action, "task_id", taskID, "success", resp.GetSuccess(), "duration", time.Since(start))
	return resp, nil
}

// Validate asks the plugin serving action whether params are valid. An
// error wrapping sdk.ErrInvalidParams says what is wrong with them.
func (h *Host) Validate(ctx context.Context, action string, params *structpb.Struct) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: not validated: %w", action, err)
	}
	inst, err := h.instanceFor(action)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, validateTimeout)
	defer cancel()
	if _, err := inst.rpc.Validate(ctx, &pluginv1.ValidateRequest{Action: action, Params: params}); err != nil {
		return h.callError(ctx, inst, action, validateTimeout, err)
	}
	return nil
}

// Describe returns what the named plugin says about itself, starting it
// if needed.
func (h *Host) Describe(name string) (*pluginv1.DescribeResponse, error) {
	inst, err := h.instance(name, name+".*")
	if err != nil {
		return nil, err
	}
	return inst.desc, nil
}

// Close kills every running plugin and refuses later calls. Calls in
// flight fail with ErrClosed.
func (h *Host) Close() {
	h.closed.Store(true)
	var wg sync.WaitGroup
	for _, s := range h.slots {
		wg.Go(func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.inst != nil {
				h.kill(s.inst, "the plugin host closed")
				s.inst = nil
			}
		})
	}
	wg.Wait()
}
