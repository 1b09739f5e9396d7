// Command tend-demo-service is the small service the demo watches and
// breaks on purpose: an HTTP server with /healthz, a pidfile, and switches
// to make its health endpoint fail (POST /fail) or recover (POST /recover).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "HTTP address")
	pidfile := flag.String("pidfile", "", "write the pid here (removed on clean exit)")
	name := flag.String("name", "demo", "name shown in responses")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("bin", "tend-demo-service", "name", *name)

	var failing atomic.Bool
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if failing.Load() {
			http.Error(w, *name+": unhealthy (failure injected)", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, "%s: ok\n", *name)
	})
	mux.HandleFunc("POST /fail", func(w http.ResponseWriter, _ *http.Request) {
		failing.Store(true)
		log.Info("health endpoint now failing")
		fmt.Fprintln(w, "failing")
	})
	mux.HandleFunc("POST /recover", func(w http.ResponseWriter, _ *http.Request) {
		failing.Store(false)
		log.Info("health endpoint recovered")
		fmt.Fprintln(w, "ok")
	})
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Error("listen", "err", err)
		os.Exit(1)
	}
	if *pidfile != "" {
		if err := os.WriteFile(*pidfile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
			log.Error("write pidfile", "err", err)
			os.Exit(1)
		}
		defer os.Remove(*pidfile)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		c, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(c)
	}()
	log.Info("serving", "addr", lis.Addr().String(), "pid", os.Getpid())
	if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Error("serve", "err", err)
		os.Exit(1)
	}
}
