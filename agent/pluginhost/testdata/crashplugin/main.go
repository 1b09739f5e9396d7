// Command crashplugin is a plugin for pluginhost's tests, built by
// TestMain as tend-plugin-crashtest. Its actions misbehave on purpose:
//
//	crashtest.echo  {text}          answers text, and logs it
//	crashtest.crash {how: exit|panic} dies during the call
//	crashtest.hang  {dir}           starts children and never answers:
//	    dir/same.pid   a child in the plugin's process group
//	    dir/group.pid  a child in a process group of its own
//	    dir/daemon.pid a child in a session of its own (must survive)
package main

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"

	"tend.dev/tend/plugins/sdk"
	pluginv1 "tend.dev/tend/proto/tend/plugin/v1"
)

type crashtest struct{ log *slog.Logger }

func (c *crashtest) Describe(context.Context) (*pluginv1.DescribeResponse, error) {
	return &pluginv1.DescribeResponse{Name: "crashtest", Version: "test", Actions: []*pluginv1.ActionInfo{
		{Name: "echo"}, {Name: "crash"}, {Name: "hang"},
	}}, nil
}

func (c *crashtest) Validate(_ context.Context, action string, params map[string]any) error {
	p := sdk.NewParams(params)
	switch action {
	case "crashtest.echo":
		p.String("text")
	case "crashtest.crash":
		p.String("how")
	case "crashtest.hang":
		p.Path("dir")
	default:
		return sdk.UnknownAction(action, "crashtest.echo", "crashtest.crash", "crashtest.hang")
	}
	return p.Err()
}

func start(dir, name string, attr *syscall.SysProcAttr) {
	cmd := exec.Command("/bin/sleep", "300")
	cmd.SysProcAttr = attr
	if err := cmd.Start(); err != nil {
		panic(err)
	}
	go func() { _ = cmd.Wait() }()
	tmp := filepath.Join(dir, name+".tmp")
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		panic(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		panic(err)
	}
}

func (c *crashtest) Execute(ctx context.Context, req sdk.ExecuteRequest) (sdk.ExecuteResult, error) {
	if err := c.Validate(ctx, req.Action, req.Params); err != nil {
		return sdk.ExecuteResult{}, err
	}
	switch req.Action {
	case "crashtest.echo":
		text := req.Params["text"].(string)
		c.log.Info("echo called", "text", text, "task_id", req.TaskID)
		return sdk.ExecuteResult{Success: true, Output: text, Metrics: map[string]float64{"pid": float64(os.Getpid())}}, nil
	case "crashtest.crash":
		if req.Params["how"] == "panic" {
			panic("crashtest: panicking on purpose")
		}
		os.Exit(3)
	case "crashtest.hang":
		dir := req.Params["dir"].(string)
		start(dir, "same.pid", nil)
		start(dir, "group.pid", &syscall.SysProcAttr{Setpgid: true})
		start(dir, "daemon.pid", &syscall.SysProcAttr{Setsid: true})
		select {} // ignores ctx on purpose
	}
	return sdk.ExecuteResult{}, nil
}

func main() { sdk.Serve(&crashtest{log: sdk.Logger()}) }
