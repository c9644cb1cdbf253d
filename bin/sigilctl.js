#!/usr/bin/env node
import { launch } from './launch.js';

await launch('sigilctl', new URL(import.meta.url).pathname);
