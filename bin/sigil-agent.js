#!/usr/bin/env node
import { launch } from './launch.js';

await launch('sigil-agent', new URL(import.meta.url).pathname);
