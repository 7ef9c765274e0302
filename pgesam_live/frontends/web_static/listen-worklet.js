// The page's listening end: PCM frames from the instrument (posted by app.js) into a ring
// buffer, played out by the audio thread. A jitter buffer of targetS is filled before playing
// (and again after a gap); more than targetS + 0.25 s queued is skipped, so latency stays low.
"use strict";

class PgesamListen extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = options.processorOptions || {};
    this.channels = o.channels || 2;
    this.rate = o.sampleRate || sampleRate;
    this.target = Math.round((o.targetS || 0.08) * this.rate);
    this.limit = this.target + Math.round(0.25 * this.rate);
    this.size = Math.round(2 * this.rate);
    this.ring = [];
    for (let c = 0; c < this.channels; c++) this.ring.push(new Float32Array(this.size));
    this.read = 0; this.write = 0; this.filled = 0;
    this.playing = false; this.underruns = 0; this.skipped = 0; this.played = 0; this.quanta = 0;
    this.port.onmessage = (ev) => this.push(ev.data);
  }

  push(chunks) {
    const n = chunks[0].length;
    for (let i = 0; i < n; i++) {
      for (let c = 0; c < this.channels; c++) this.ring[c][this.write] = chunks[Math.min(c, chunks.length - 1)][i];
      this.write = (this.write + 1) % this.size;
    }
    this.filled = Math.min(this.size, this.filled + n);
    if (this.filled > this.limit) {   // too far behind: skip to the target
      const drop = this.filled - this.target;
      this.read = (this.read + drop) % this.size;
      this.filled -= drop; this.skipped += drop;
    }
  }

  process(inputs, outputs) {
    const out = outputs[0], n = out[0].length;
    if (!this.playing && this.filled >= this.target) this.playing = true;
    if (this.playing && this.filled < n) { this.playing = false; this.underruns += 1; }
    for (let i = 0; i < n; i++) {
      for (let c = 0; c < out.length; c++) {
        out[c][i] = this.playing ? this.ring[Math.min(c, this.channels - 1)][this.read] : 0;
      }
      if (this.playing) { this.read = (this.read + 1) % this.size; this.filled -= 1; this.played += 1; }
    }
    if (++this.quanta % 24 === 0) {
      this.port.postMessage({ buffered: this.filled, underruns: this.underruns,
                              skipped: this.skipped, played: this.played });
    }
    return true;
  }
}

registerProcessor("pgesam-listen", PgesamListen);
