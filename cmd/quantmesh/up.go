package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"go.opentelemetry.io/otel"

	"github.com/quantmesh/quantmesh/internal/mesh"
	"github.com/quantmesh/quantmesh/pkg/telemetry"
)

func runUp(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("quantmesh up", flag.ContinueOnError)
	var f meshFlags
	f.register(fs, false)
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("up takes no arguments, got %q", fs.Args())
	}
	cfg, logCfg, err := f.config(mesh.Runnable())
	if err != nil {
		return err
	}
	return serveMesh(ctx, cfg, logCfg, f.otlpEndpoint, stdout, stderr)
}

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("quantmesh serve", flag.ContinueOnError)
	var f meshFlags
	f.register(fs, true)
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("serve takes no arguments, got %q", fs.Args())
	}
	services, err := splitServices(f.services)
	if err != nil {
		return err
	}
	cfg, logCfg, err := f.config(services)
	if err != nil {
		return err
	}
	return serveMesh(ctx, cfg, logCfg, f.otlpEndpoint, stdout, stderr)
}

// serveMesh starts a mesh process and runs it until ctx is done.
func serveMesh(ctx context.Context, cfg mesh.Config, logCfg telemetry.LogConfig, otlp string, stdout, stderr io.Writer) error {
	log, err := telemetry.NewLogger(stderr, logCfg)
	if err != nil {
		return usagef("%v", err)
	}
	tel, err := telemetry.Setup(ctx, telemetry.Config{Version: version, OTLPEndpoint: otlp})
	if err != nil {
		return fmt.Errorf("telemetry: %w", err)
	}
	defer func() {
		if err := tel.Shutdown(context.WithoutCancel(ctx)); err != nil {
			log.Warn("telemetry shutdown", "error", err)
		}
	}()
	// The process-wide defaults, for libraries that use the otel globals.
	otel.SetTracerProvider(tel.TracerProvider)
	otel.SetMeterProvider(tel.MeterProvider)
	otel.SetTextMapPropagator(tel.Propagator)
	slog.SetDefault(log)

	m, err := mesh.Start(ctx, cfg, log, tel)
	if err != nil {
		var se *mesh.StartError
		if errors.As(err, &se) && se.Step == "config" {
			return usagef("%v", err)
		}
		return err
	}
	printBanner(stdout, m, cfg)
	log.Info("quantmesh started", "grpc", m.Server.GRPCAddr(), "http", m.Server.HTTPAddr(),
		"services", strings.Join(cfg.Services, ","), "store", m.DB.Mode(), "bus", busName(cfg))
	err = m.Serve(ctx)
	if err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	log.Info("quantmesh stopped")
	return nil
}

func busName(cfg mesh.Config) string {
	if len(cfg.KafkaBrokers) > 0 {
		return "kafka " + strings.Join(cfg.KafkaBrokers, ",")
	}
	return "in-process"
}

// printBanner tells a person where everything listens and what to try
// first.
func printBanner(w io.Writer, m *mesh.Mesh, cfg mesh.Config) {
	grpcAddr, httpAddr := m.Server.GRPCAddr(), m.Server.HTTPAddr()
	auth := "off (loopback only)"
	if cfg.Keys.Enabled() {
		auth = fmt.Sprintf("on (%d API keys)", cfg.Keys.Len())
	}
	fmt.Fprintf(w, "%s\n", versionString())
	fmt.Fprintf(w, "  services  %s\n", strings.Join(m.Server.ServiceNames(), ", "))
	fmt.Fprintf(w, "  gRPC      %s (health, reflection)\n", grpcAddr)
	fmt.Fprintf(w, "  REST      http://%s/v1/...\n", httpAddr)
	fmt.Fprintf(w, "  metrics   http://%s/metrics\n", httpAddr)
	fmt.Fprintf(w, "  health    http://%s/healthz  http://%s/readyz\n", httpAddr, httpAddr)
	fmt.Fprintf(w, "  store     %s\n", m.DB)
	fmt.Fprintf(w, "  bus       %s\n", busName(cfg))
	fmt.Fprintf(w, "  auth      %s\n", auth)
	fmt.Fprintf(w, "try:\n")
	fmt.Fprintf(w, "  grpcurl -plaintext %s list\n", grpcAddr)
	fmt.Fprintf(w, "  grpcurl -plaintext -d '{\"name\":\"first\"}' %s quantmesh.experiment.v1.ExperimentService/CreateExperiment\n", grpcAddr)
	fmt.Fprintf(w, "  curl -s http://%s/v1/experiments\n", httpAddr)
}
