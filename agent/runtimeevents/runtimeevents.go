// Package runtimeevents turns containerd's task events (a sandbox or container started, exited,
// deleted) in the CRI namespace into check triggers, so a pod is checked as soon as its
// init containers have run rather than at the next periodic pass. Exec processes (kubelet's exec
// probes) are ignored: they exit every few seconds and say nothing about capture. The
// subscription is re-established with backoff when containerd restarts.
package runtimeevents

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	apievents "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/typeurl/v2"
)

// Namespace is the containerd namespace of Kubernetes' containers.
const Namespace = "k8s.io"

// Trigger asks for a check of the pod owning the container (a sandbox id or a container id).
type Trigger func(containerID, why string)

// Watch subscribes to containerd at address and calls trigger until ctx ends.
func Watch(ctx context.Context, address string, trigger Trigger, log *slog.Logger) error {
	c, err := client.New(address, client.WithDefaultNamespace(Namespace), client.WithTimeout(5*time.Second))
	if err != nil {
		return fmt.Errorf("connecting to containerd at %s for events: %w", address, err)
	}
	defer c.Close()
	backoff := time.Second
	for ctx.Err() == nil {
		start := time.Now()
		err := watchOnce(ctx, c, trigger)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(start) > time.Minute {
			backoff = time.Second
		}
		log.Warn("containerd event subscription ended; resubscribing", "address", address, "err", err, "in", backoff.String())
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Minute)
	}
	return nil
}

func watchOnce(ctx context.Context, c *client.Client, trigger Trigger) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	evs, errs := c.Subscribe(ctx,
		`namespace=="k8s.io",topic=="/tasks/start"`,
		`namespace=="k8s.io",topic=="/tasks/exit"`,
		`namespace=="k8s.io",topic=="/tasks/delete"`)
	// A new subscription may have missed events: let the agent look at the whole node.
	trigger("", "containerd event subscription (re)started")
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-errs:
			return fmt.Errorf("containerd events: %w", err)
		case env := <-evs:
			if env == nil || env.Event == nil {
				continue
			}
			v, err := typeurl.UnmarshalAny(env.Event)
			if err != nil {
				continue
			}
			switch e := v.(type) {
			case *apievents.TaskStart:
				trigger(e.ContainerID, "container started")
			case *apievents.TaskExit:
				if e.ID == e.ContainerID {
					trigger(e.ContainerID, "container exited")
				}
			case *apievents.TaskDelete:
				if e.ID == "" || e.ID == e.ContainerID {
					trigger(e.ContainerID, "container deleted")
				}
			}
		}
	}
}
