export type { FileError, ResourceSource, SourceState } from './dir-source.js';
export { DirectorySource } from './dir-source.js';
export type { LoadOptions, LoadResult } from './load.js';
export { loadManifests, readStdinText } from './load.js';
export type { ReadResult } from './resources.js';
export { readResources } from './resources.js';
export type { ManifestObject, ParsedText } from './yaml-source.js';
export { parseManifestText } from './yaml-source.js';
