// The Models page's plots, drawn as inline SVG (no chart library): ROC curves of production and
// shadow against one truth, and each study's shadow score against its production score.

import type { Arm, ShadowPair } from './api';

const SVG_NS = 'http://www.w3.org/2000/svg';
const SIZE = 240; // the plot's square, in SVG units
const MARGIN = { left: 40, right: 10, top: 10, bottom: 34 };

/** The colour class of each arm (styles.css: .arm-production, .arm-shadow). */
export const ARM_CLASS: Record<Arm, string> = {
  production: 'arm-production',
  shadow: 'arm-shadow',
};

type SvgAttributes = Record<string, string | number>;

function svg<K extends keyof SVGElementTagNameMap>(
  tag: K,
  attributes: SvgAttributes = {},
  ...children: (SVGElement | string)[]
): SVGElementTagNameMap[K] {
  const element = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes)) {
    element.setAttribute(name, String(value));
  }
  element.append(...children);
  return element;
}

/** x and y in [0, 1] to SVG coordinates (y upwards). */
function at(x: number, y: number): [number, number] {
  return [MARGIN.left + x * SIZE, MARGIN.top + (1 - y) * SIZE];
}

/** An empty unit-square plot: frame, ticks at 0, 0.5 and 1, and the axis titles. */
function frame(testId: string, title: string, xTitle: string, yTitle: string): SVGSVGElement {
  const width = MARGIN.left + SIZE + MARGIN.right;
  const height = MARGIN.top + SIZE + MARGIN.bottom;
  const plot = svg('svg', {
    viewBox: `0 0 ${width} ${height}`, width, height, class: 'plot', role: 'img',
    'data-testid': testId, 'aria-label': title,
  }, svg('title', {}, title));
  const [x0, y0] = at(0, 0);
  plot.append(svg('rect', { x: x0, y: MARGIN.top, width: SIZE, height: SIZE, class: 'plot-frame' }));
  for (const tick of [0, 0.5, 1]) {
    const [tx] = at(tick, 0);
    const [, ty] = at(0, tick);
    plot.append(
      svg('text', { x: tx, y: y0 + 14, class: 'tick', 'text-anchor': 'middle' }, String(tick)),
      svg('text', { x: x0 - 6, y: ty + 4, class: 'tick', 'text-anchor': 'end' }, String(tick)),
    );
  }
  plot.append(
    svg('text', { x: x0 + SIZE / 2, y: y0 + 30, class: 'axis-title', 'text-anchor': 'middle' },
      xTitle),
    svg('text', {
      x: 12, y: MARGIN.top + SIZE / 2, class: 'axis-title', 'text-anchor': 'middle',
      transform: `rotate(-90 12 ${MARGIN.top + SIZE / 2})`,
    }, yTitle),
  );
  return plot;
}

function diagonal(): SVGLineElement {
  const [x1, y1] = at(0, 0);
  const [x2, y2] = at(1, 1);
  return svg('line', { x1, y1, x2, y2, class: 'chance' });
}

/**
 * ROC curves (false positive rate, true positive rate) of each arm against the truth `truth`,
 * as steps through the corners the API gives (serving/shadow.py roc_curve).
 */
export function rocPlot(truth: string, curves: Partial<Record<Arm, [number, number][]>>): SVGSVGElement {
  const plot = frame('roc-plot', `ROC against ${truth} truth`, 'false positive rate',
    'true positive rate');
  plot.setAttribute('data-truth', truth);
  plot.append(diagonal());
  for (const arm of ['production', 'shadow'] as const) {
    const points = curves[arm];
    if (!points || points.length === 0) {
      continue;
    }
    plot.append(svg('polyline', {
      points: points.map(([x, y]) => at(x, y).map((v) => v.toFixed(1)).join(',')).join(' '),
      class: `curve ${ARM_CLASS[arm]}`,
      'data-testid': 'roc-curve',
      'data-arm': arm,
      'data-points': points.length,
    }));
  }
  return plot;
}

/** Each study's shadow score (y) against its production score (x); scores lie in [0, 1]. */
export function scatterPlot(pairs: ShadowPair[]): SVGSVGElement {
  const plot = frame('score-scatter', 'Shadow against production score per study',
    'production score', 'shadow score');
  plot.append(diagonal());
  const clamp = (value: number): number => Math.min(1, Math.max(0, value));
  for (const pair of pairs) {
    const [cx, cy] = at(clamp(pair.production_score), clamp(pair.score));
    const agree = pair.positive === pair.production_positive;
    plot.append(svg('circle', {
      cx: cx.toFixed(1), cy: cy.toFixed(1), r: 3.5,
      class: agree ? 'pair agree' : 'pair disagree',
      'data-testid': 'score-pair',
    }, svg('title', {}, `${pair.study_instance_uid}: production ${pair.production_score
      .toFixed(3)}, shadow ${pair.score.toFixed(3)}${agree ? '' : ' (calls differ)'}`)));
  }
  return plot;
}
