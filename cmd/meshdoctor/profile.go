package main

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"

	"github.com/spf13/pflag"
)

// profiling writes pprof profiles of one run of any command (--cpu-profile, --heap-profile):
// where an SRE or a benchmark sees the CPU and the allocations of a real `check` or agent on a
// node go, without a debug listener. Both files are written when the command returns, the agent
// included (SIGTERM ends it cleanly).
type profiling struct {
	cpuPath, heapPath string
	cpu               *os.File
}

func (p *profiling) register(f *pflag.FlagSet) {
	f.StringVar(&p.cpuPath, "cpu-profile", "", "write a pprof CPU profile of this run to `FILE`")
	f.StringVar(&p.heapPath, "heap-profile", "", "write a pprof heap profile (allocations since start, live heap) to `FILE` at the end of this run")
}

// start begins the CPU profile when one is asked for.
func (p *profiling) start() error {
	if p.cpuPath == "" {
		return nil
	}
	f, err := os.Create(p.cpuPath)
	if err != nil {
		return fmt.Errorf("--cpu-profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return fmt.Errorf("--cpu-profile %s: %w", p.cpuPath, err)
	}
	p.cpu = f
	return nil
}

// stop ends the CPU profile and writes the heap profile; it is safe to call when nothing runs.
func (p *profiling) stop() error {
	var errs []error
	if p.cpu != nil {
		pprof.StopCPUProfile()
		if err := p.cpu.Close(); err != nil {
			errs = append(errs, fmt.Errorf("--cpu-profile %s: %w", p.cpuPath, err))
		}
		p.cpu = nil
	}
	if p.heapPath != "" {
		runtime.GC() // the live heap as of the end, not as of the last cycle
		if err := writeHeapProfile(p.heapPath); err != nil {
			errs = append(errs, fmt.Errorf("--heap-profile %s: %w", p.heapPath, err))
		}
	}
	return errors.Join(errs...)
}

func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
