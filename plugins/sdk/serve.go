package sdk

import (
	"context"
	"log/slog"
	"os"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
)

// stderr is the process's real standard error, kept before plugin.Serve
// points os.Stderr at its stdio stream: what is written here reaches the
// agent as log lines.
var stderr = os.Stderr

// hclogTime is the timestamp layout go-plugin parses in a plugin's JSON
// log lines.
const hclogTime = "2006-01-02T15:04:05.000000Z07:00"

// Logger returns the logger a plugin should use: JSON lines on stderr in
// hclog's shape (@level, @message, @timestamp), which the agent's
// go-plugin client parses and logs again under its own logger, tagged with
// the plugin. Never log to stdout: it is the handshake channel.
func Logger() *slog.Logger {
	return slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{
		Level: slog.LevelDebug,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) > 0 {
				return a
			}
			switch a.Key {
			case slog.TimeKey:
				return slog.String("@timestamp", a.Value.Time().Format(hclogTime))
			case slog.MessageKey:
				return slog.String("@message", a.Value.String())
			case slog.LevelKey:
				return slog.String("@level", hclogLevel(a.Value.Any()))
			}
			return a
		},
	}))
}

func hclogLevel(v any) string {
	l, _ := v.(slog.Level)
	switch {
	case l < slog.LevelDebug:
		return "trace"
	case l < slog.LevelInfo:
		return "debug"
	case l < slog.LevelWarn:
		return "info"
	case l < slog.LevelError:
		return "warn"
	}
	return "error"
}

// Serve runs impl as a go-plugin gRPC plugin and returns when the agent
// closes it. It is the whole of a plugin's main. Run by hand (without the
// agent's handshake cookie) it says so and exits 1. A plugin whose parent
// goes away (the agent died) exits within a second, so that it is never
// left behind.
func Serve(impl Action) {
	fixProcName()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go exitWhenOrphaned(ctx, os.Getppid())
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig:  Handshake,
		VersionedPlugins: VersionedPlugins(impl),
		GRPCServer:       plugin.DefaultGRPCServer,
		Logger: hclog.New(&hclog.LoggerOptions{
			Name:       "plugin",
			Level:      hclog.Debug,
			Output:     stderr,
			JSONFormat: true,
		}),
	})
}

func exitWhenOrphaned(ctx context.Context, parent int) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if os.Getppid() != parent {
				Logger().Error("the agent that started this plugin is gone; exiting", "parent_pid", parent)
				os.Exit(1)
			}
		}
	}
}
