#!/usr/bin/env node
import { launch } from './launch.js';

await launch('sigild', new URL(import.meta.url).pathname);
